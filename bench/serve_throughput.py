"""Serving throughput on one GPU: loraops' fast decode step (static KV cache, CUDA graphs, Triton BGMV adapter
kernels; ``loraops_serving.graph_decode``) against transformers ``generate``, eager and with
``cache_implementation="static"`` (transformers' compiled decode), in the same run.

Llama-2-7B shape, random bf16 weights, 8 random LoRA adapters (r=64, all linear layers).

1. Closed batches: 128-token prompts from the dolly sample, 128 new tokens (greedy, every token counted: no EOS
   stop on either side), batch 1 and 16, for (a) plain weights, (b) base + 1 adapter on every row, (c) 8 distinct
   adapters mixed in one batch. Timed from the prompts to the last token (prefill included).
2. Open loop through the product's scheduler (``Engine.scheduler``: its admission, prefill, continuous batching
   over the graph backend): Poisson arrivals at several rates, dolly prompts (instruction + context, at most 384
   tokens) and lengths (the reference response's token count, 16..256), each request's adapter drawn among the 8;
   per rate: generated tokens/s, time to first token and inter-token latency p50/p95.

3. The served path: the same closed batches (plain, 8 mixed; batch 1 and 16) sent as requests through the
   engine's scheduler (``Engine.generate``: tokenizing, per-row sampling, stop checks, text decoding per token),
   over whichever backend the engine picks (the graph backend on CUDA), beside ``GraphDecoder`` driven directly.

This file runs the parts and reports; ``serve_setup.py`` builds the base, adapters and requests, ``serve_closed.py``
runs 1. and 3., ``serve_open_loop.py`` runs 2.

    python bench/serve_throughput.py --runs 2   # writes bench/results/serve_throughput.json, prints both tables
    python bench/serve_throughput.py --quick    # closed batches only, loraops direct and scheduled, one run each
    python bench/serve_throughput.py --quick --scheduler-only    # only the scheduled rows of --quick
    python bench/serve_throughput.py --open-loop-only --out ...  # only the open loop (2.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from serve_closed import Loraops, closed_batches, scheduled_batches
from serve_open_loop import scheduled_open_loop
from serve_setup import ROOT, ensure_base, record_digest, sync, write_adapters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["llama2-7b", "tiny"], default="llama2-7b")
    parser.add_argument("--work", default="/tmp/loraops-serve-bench")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="*", default=[4, 8, 16, 32, 0], help="req/s; 0: all at once")
    parser.add_argument("--open-requests", type=int, default=256, help="requests a rate (64 before)")
    parser.add_argument("--open-batch", type=int, default=32, help="the scheduler's max batch in the open loop")
    parser.add_argument(
        "--open-loop-only", action="store_true", help="only the open loop through the engine's scheduler"
    )
    parser.add_argument("--skip-closed", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="closed batches only (plain, 8 mixed), loraops direct and scheduled"
    )
    parser.add_argument(
        "--scheduler-only", action="store_true", help="with --quick: only the scheduler rows (no direct rows, no floor)"
    )
    parser.add_argument("--out", help="results file (default: bench/results/serve_throughput[_quick].json)")
    args = parser.parse_args()
    if args.out is None:
        args.out = str(ROOT / "bench" / "results" / f"serve_throughput{'_quick' if args.quick else ''}.json")
    if args.quick:
        args.rates, args.runs = [], min(args.runs, 1)

    from transformers import AutoTokenizer

    work = Path(args.work)
    start = time.time()
    base = ensure_base(work / "base", args.shape)
    adapters = write_adapters(base, work / "adapters", 8, 64)
    print(f"base and adapters ready in {time.time() - start:.0f}s", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: a smoke run of the tiny shape only
    record_digest(base)
    results: list[dict] = []
    floor: dict = {}
    load: list[dict] = []
    if args.open_loop_only:  # the product's path under load alone
        load = scheduled_open_loop(args, base, adapters, tokenizer)
    elif args.scheduler_only:  # the product's path alone: no GraphDecoder of its own, no bandwidth floor
        scheduled_batches(args, base, adapters, tokenizer, results)
    else:
        ours = Loraops(base, adapters, max_batch=32, max_len=640, device=device)

        # the bandwidth floor: every weight read once per step
        weight_bytes = sum(p.numel() * p.element_size() for n, p in ours.model.named_parameters() if "lora" not in n)
        src = torch.empty(2**30 if device == "cuda" else 2**24, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        sync()
        begin = time.perf_counter()
        for _ in range(20):
            dst.copy_(src)
        sync()
        bandwidth = 2 * 20 * src.numel() / (time.perf_counter() - begin)
        del src, dst
        floor = {f"batch_{b}_tokens_per_s": b * bandwidth / weight_bytes for b in (1, 16)}
        floor |= {"copy_bandwidth_tb_s": bandwidth / 1e12, "weight_gb": weight_bytes / 1e9}

        if not args.skip_closed:
            closed_batches(args, ours, base, tokenizer, results)
        del ours
        torch.cuda.empty_cache()
        if not args.skip_closed:
            scheduled_batches(args, base, adapters, tokenizer, results)
            torch.cuda.empty_cache()
        load = scheduled_open_loop(args, base, adapters, tokenizer) if args.rates else []

    def speed(impl: str, layout: str, batch: int) -> float:
        hits = [r["tokens_per_s"] for r in results if (r["impl"], r["layout"], r["batch"]) == (impl, layout, batch)]
        return hits[0] if hits else float("nan")

    print(f"\n{'impl':<20} {'layout':<14} {'batch':>5} {'tok/s':>8} {'p50 s':>7} {'step ms':>8} {'x plain':>8}")
    for r in results:
        r["x_plain_same_impl"] = r["tokens_per_s"] / speed(r["impl"], "a_plain", r["batch"])
        step = (
            f"{r['decode_step_ms']:.2f}" if "decode_step_ms" in r else f"{r['step_ms']:.2f}*" if "step_ms" in r else "-"
        )
        print(
            f"{r['impl']:<20} {r['layout']:<14} {r['batch']:>5} {r['tokens_per_s']:>8.0f} {r['p50_s']:>7.2f} "
            f"{step:>8} {r['x_plain_same_impl']:>8.2f}"
        )
    print("* loraops_scheduler: the request's whole time over its decode steps (prefill included)")
    print(f"floor: {json.dumps(floor)}")
    print(f"\n{'rate/s':>11} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} (ms)")
    for r in load:
        print(
            f"{r['rate_per_s']!s:>11} {r['tokens_per_s']:>7.0f} {r['ttft_p50_ms']:>9.0f} {r['ttft_p95_ms']:>9.0f} "
            f"{r['itl_p50_ms']:>8.1f} {r['itl_p95_ms']:>8.1f}"
        )
    saturated = max(load, key=lambda r: r["tokens_per_s"]) if load else None
    targets = {
        "plain_b16_over_static_generate": speed("loraops", "a_plain", 16) / speed("transformers_static", "a_plain", 16),
        "plain_b1_tokens_per_s": speed("loraops", "a_plain", 1),
        "scheduled_plain_b16_over_direct": speed("loraops_scheduler", "a_plain", 16) / speed("loraops", "a_plain", 16),
        "mixed_over_plain_b16": speed("loraops", "c_eight_mixed", 16) / speed("loraops", "a_plain", 16),
        "saturation_tokens_per_s": saturated["tokens_per_s"] if saturated else None,
        "saturation_itl_p95_ms": saturated["itl_p95_ms"] if saturated else None,
    }
    targets = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in targets.items()}  # strict JSON
    print(json.dumps(targets, indent=2))
    setup = {
        "quick": args.quick,
        "scheduler_only": args.scheduler_only,
        "shape": args.shape,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
    }
    setup |= {"adapters": "8 x r=64, all linear layers", "open_requests": args.open_requests, "dtype": "bfloat16"}
    payload = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "setup": setup,
    }
    payload |= {"closed_batches": results, "open_loop": load, "bandwidth_floor": floor, "targets": targets}
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
