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

    python bench/serve_throughput.py --runs 2   # writes bench/results/serve_throughput.json, prints both tables
    python bench/serve_throughput.py --quick    # closed batches only, loraops direct and scheduled, one run each
    python bench/serve_throughput.py --quick --scheduler-only    # only the scheduled rows of --quick
    python bench/serve_throughput.py --open-loop-only --out ...  # only the open loop (2.)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
MODULES += ("mlp.up_proj", "mlp.down_proj")
LAYOUTS = ("a_plain", "b_one_adapter", "c_eight_mixed")


def ensure_base(folder: Path, shape_name: str) -> Path:
    from loraops_trainer.synthetic_base import LLAMA2_7B, TINY, build_base_model, dolly_texts

    if not (folder / "config.json").is_file():
        shape = {"llama2-7b": LLAMA2_7B, "tiny": TINY}[shape_name]
        build_base_model(folder, dolly_texts(DOLLY), shape, dtype=torch.bfloat16)
    return folder


def write_adapters(base: Path, root: Path, count: int, rank: int) -> list[Path]:
    """``count`` PEFT LoRA folders (random A/B on every linear layer), written without touching the base model."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    h, i = config.hidden_size, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h)}
    shapes |= {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    folders = []
    for n in range(count):
        folder = root / f"adapter-{n}"
        folders.append(folder)
        if (folder / "adapter_model.safetensors").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=rank, lora_alpha=16, target_modules=list(shapes), task_type="CAUSAL_LM").save_pretrained(folder)
        generator = torch.Generator().manual_seed(n)
        tensors = {}
        for layer in range(config.num_hidden_layers):
            for module in MODULES:
                fan_in, fan_out = shapes[module.rsplit(".", 1)[1]]
                key = f"base_model.model.model.layers.{layer}.{module}"
                a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
                tensors[f"{key}.lora_A.weight"] = a.to(torch.bfloat16)
                b = torch.randn(fan_out, rank, generator=generator) * 0.01
                tensors[f"{key}.lora_B.weight"] = b.to(torch.bfloat16)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folders


def record_digest(base: Path) -> None:
    """Write the base's weights digest beside it (as an import does), so the engine does not hash 13 GB again."""
    from loraops.manifest import BASE_MANIFEST
    from loraops_serving.layouts import base_digest

    if not (base / BASE_MANIFEST).is_file():
        (base / BASE_MANIFEST).write_text(json.dumps({"weights_digest": base_digest(base)}))


def closed_prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    """Dolly instructions and contexts, joined and cut into ``count`` prompts of exactly ``length`` tokens."""
    records = [json.loads(line) for line in DOLLY.read_text().splitlines()]
    text = " ".join(f"{r['instruction']} {r['context']}" for r in records)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[k * length : (k + 1) * length] for k in range(count)]


def open_requests(tokenizer, count: int, seed: int, max_prompt: int, max_new: int) -> list[tuple[list[int], int]]:
    """``count`` dolly records as (prompt ids, new tokens = the reference response's length, clipped)."""
    records = [json.loads(line) for line in DOLLY.read_text().splitlines()]
    random.Random(seed).shuffle(records)
    out = []
    for r in (records * (1 + count // len(records)))[:count]:
        context = f"\n\n### Context:\n{r['context']}" if r["context"] else ""
        prompt = f"### Instruction:\n{r['instruction']}{context}\n\n### Response:\n"
        ids = tokenizer(prompt)["input_ids"][-max_prompt:]
        new = min(max(len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]), 16), max_new)
        out.append((ids, new))
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def timed(run, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        run()
    sync()
    times, tokens = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        tokens += run()
        sync()
        times.append(time.perf_counter() - start)
    return {"tokens_per_s": tokens / sum(times), "p50_s": statistics.median(times), "runs": runs}


class Loraops:
    """The model with 8 adapters in slots 1..8 and a :class:`GraphDecoder` over it."""

    def __init__(self, base: Path, adapters: list[Path], max_batch: int, max_len: int, device: str) -> None:
        from transformers import AutoModelForCausalLM

        from loraops_serving.graph_decode import GraphDecoder
        from loraops_serving.layouts import base_digest, read_adapter
        from loraops_serving.multi_lora import Routing, attach_adapter

        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device).eval()
        self.routing, layers = Routing(), {}
        digest = base_digest(base)
        for slot, folder in enumerate(adapters, start=1):
            adapter = read_adapter(folder.name, folder, digest, allow_unverified=True)  # no manifests here
            attach_adapter(self.model, layers, self.routing, adapter, slot, len(adapters) + 1)
        self.decoder = GraphDecoder(self.model, self.routing, max_batch=max_batch, max_len=max_len)

    def closed(self, prompts: list[list[int]], slots: list[int], new: int) -> tuple[int, list[list[int]], float]:
        """Greedy ``new`` tokens for each prompt in rows 0..n-1; returns (tokens, their ids, decode seconds)."""
        n = len(prompts)
        logits = self.decoder.prefill(list(range(n)), prompts, slots)
        token = logits.argmax(-1)
        produced = [token]
        lengths = torch.tensor([len(p) for p in prompts])
        slots_t = torch.tensor(slots)
        sync()
        start = time.perf_counter()
        for step in range(new - 1):
            # the scheduler's step: positions and slots come from the host, the fed tokens stay on the device
            token = self.decoder.decode(token, lengths + step, slots_t).argmax(-1)
            produced.append(token)
            token.tolist()  # a real scheduler reads each step's tokens (stops, streaming): keep that sync
        sync()
        decode_s = time.perf_counter() - start
        ids = torch.stack(produced, 1).tolist()
        return n * new, ids, decode_s


def scheduled_batches(args, base: Path, adapters: list[Path], tokenizer, results: list) -> None:
    """The closed batches as requests through the engine's scheduler (the product's path), greedy, one request
    of ``batch`` inputs; counts the tokens the requests produced (an EOS ends a row early)."""
    from loraops_serving.engine import Engine, Row
    from loraops_serving.settings import ServingSettings

    settings = ServingSettings(
        max_batch_size=16,
        max_resident_adapters=8,
        max_new_tokens=args.new_tokens,
        max_total_tokens=2 * args.prompt_tokens + args.new_tokens,  # room for re-tokenized prompts
        allow_unverified_adapters=True,  # the bench's adapters carry no manifest
    )
    engine = Engine(base, settings, adapters)
    texts = [tokenizer.decode(ids) for ids in closed_prompts(tokenizer, 16, args.prompt_tokens)]
    names = [folder.name for folder in adapters]
    layouts = {"a_plain": lambda k: None, "c_eight_mixed": lambda k: names[k % 8]}
    for batch in (1, 16):
        for layout, adapter in layouts.items():
            rows = [Row(texts[k], adapter(k), args.new_tokens) for k in range(batch)]
            steps = []

            def run(rows=rows, steps=steps, engine=engine) -> int:
                before = engine.scheduler.steps
                generations = engine.generate(rows)
                steps.append(engine.scheduler.steps - before)
                return sum(g.tokens for g in generations)

            result = timed(run, args.runs, 1)
            result |= {"backend": engine.backend.name, "decode_steps_last_run": steps[-1]}
            result["step_ms"] = 1000 * result["p50_s"] / max(steps[-1], 1)  # prefill included
            results.append({"impl": "loraops_scheduler", "layout": layout, "batch": batch, **result})
            print(results[-1], flush=True)
    engine.scheduler.shutdown()


def closed_batches(args, ours: Loraops, base: Path, tokenizer, results: list) -> None:
    from transformers import AutoModelForCausalLM

    texts = closed_prompts(tokenizer, 16, args.prompt_tokens)
    layouts = {"a_plain": lambda n: [0] * n, "b_one_adapter": lambda n: [1] * n}
    layouts["c_eight_mixed"] = lambda n: [1 + k % 8 for k in range(n)]
    ours.decoder.warm_up(windows=[w for w in ours.decoder.window_buckets if w <= 2 * args.prompt_tokens + 128])
    reference_ids = {}
    for batch in (1, 16):
        for layout in ("a_plain", "c_eight_mixed") if args.quick else LAYOUTS:
            decode_times = []

            def run(batch=batch, layout=layout, decode_times=decode_times) -> int:
                tokens, ids, decode_s = ours.closed(texts[:batch], layouts[layout](batch), args.new_tokens)
                decode_times.append(decode_s)
                reference_ids[(batch, layout)] = ids
                return tokens

            result = timed(run, args.runs, 1)
            step_ms = 1000 * statistics.median(decode_times[1:]) / (args.new_tokens - 1)
            results.append({"impl": "loraops", "layout": layout, "batch": batch, **result, "decode_step_ms": step_ms})
            print(results[-1], flush=True)
    if args.quick:
        return

    device = ours.decoder.device
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device).eval()
    for impl, extra in (("transformers_eager", {}), ("transformers_static", {"cache_implementation": "static"})):
        for batch in (1, 16):
            ids = torch.tensor(texts[:batch], device=device)

            def hf(ids=ids, extra=extra, model=model) -> int:
                with torch.no_grad():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                        **extra,
                    )
                hf.last = out[:, ids.shape[1] :].tolist()
                return out[:, ids.shape[1] :].numel()

            result = timed(hf, args.runs, 2 if extra else 1)  # static: the first calls compile
            mine = reference_ids[(batch, "a_plain")]
            agree = [next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(mine, hf.last)]
            # random weights give nearly flat logits: bf16 rounding differences flip near-ties (fp32 agrees: GPU tests)
            result["first_disagreement_with_loraops_plain"] = {"min": min(agree), "mean": statistics.mean(agree)}
            results.append({"impl": impl, "layout": "a_plain", "batch": batch, **result})
            print(results[-1], flush=True)
    del model
    torch.cuda.empty_cache()


def open_texts(tokenizer, count: int, seed: int, max_prompt: int, max_new: int) -> list[tuple[str, int]]:
    """The requests of :func:`open_requests` as prompt texts (what a client sends)."""
    return [(tokenizer.decode(ids, skip_special_tokens=True), new) for ids, new in open_requests(
        tokenizer, count, seed, max_prompt, max_new)]  # fmt: skip


def scheduled_open_loop(args, base: Path, adapters: list[Path], tokenizer) -> list[dict]:
    """The open loop through the product: Poisson arrivals submitted to the engine's :class:`Scheduler` (its own
    admission, prefill and continuous batching over the graph backend), greedy, each request's adapter drawn
    among the 8. Token times are those of the scheduler's ``token`` events (a piece the detokenizer holds back, a
    partial character, arrives with the next one); tokens counted are those the requests produced."""

    from loraops_serving.engine import Engine, Row
    from loraops_serving.settings import ServingSettings

    settings = ServingSettings(
        max_batch_size=args.open_batch,
        max_resident_adapters=8,
        max_new_tokens=256,
        max_total_tokens=1024,
        allow_unverified_adapters=True,
    )
    engine = Engine(base, settings, adapters)
    names = [folder.name for folder in adapters]
    requests = open_texts(tokenizer, args.open_requests, 0, 384, 256)
    engine.generate([Row(requests[0][0], names[k], 4) for k in range(8)])  # adapters resident
    if hasattr(engine.backend, "warm_up"):  # a warmed server: every decode graph captured before the load
        print(f"captured {engine.backend.warm_up(every_bucket=True)} graphs (decode and prefill)", flush=True)
    out = []
    for rate in args.rates:
        rng = random.Random(int(rate * 1000))
        arrivals, t = [], 0.0
        for _ in requests:
            t += rng.expovariate(rate) if rate > 0 else 0.0
            arrivals.append(t)
        chosen = [names[rng.randrange(8)] for _ in requests]
        stamps: list[list[float]] = [[] for _ in requests]
        tickets = []
        steps_before = engine.scheduler.steps
        t0 = time.perf_counter()
        for k, ((prompt, new), adapter) in enumerate(zip(requests, chosen)):
            delay = arrivals[k] - (time.perf_counter() - t0)
            if delay > 0:
                time.sleep(delay)

            def sink(kind, payload, times=stamps[k]) -> None:
                if kind == "token":
                    times.append(time.perf_counter())

            tickets.append(engine.scheduler.submit([Row(prompt, adapter, new)], sink))
        outcomes = [ticket.wait(600) for ticket in tickets]
        elapsed = time.perf_counter() - t0
        failed = [o for o in outcomes if not isinstance(o, list)]
        generated = sum(g.tokens for o in outcomes if isinstance(o, list) for g in o)
        ttft = [times[0] - t0 - arrivals[k] for k, times in enumerate(stamps) if times]
        gaps = [b - a for times in stamps for a, b in zip(times, times[1:])]
        row = {
            "rate_per_s": rate if rate > 0 else "all at once",
            "requests": len(requests),
            "failed": len(failed),
            "tokens_per_s": generated / elapsed,
            "ttft_p50_ms": 1000 * percentile(ttft, 0.5),
            "ttft_p95_ms": 1000 * percentile(ttft, 0.95),
            "itl_p50_ms": 1000 * percentile(gaps, 0.5),
            "itl_p95_ms": 1000 * percentile(gaps, 0.95),
            "decode_steps": engine.scheduler.steps - steps_before,
            "seconds": elapsed,
            "max_batch": args.open_batch,
        }
        out.append(row)
        print(row, flush=True)
    engine.scheduler.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["llama2-7b", "tiny"], default="llama2-7b")
    parser.add_argument("--work", default="/tmp/loraops-serve-bench")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="*", default=[4, 8, 16, 32, 0], help="req/s; 0: all at once")
    parser.add_argument("--open-requests", type=int, default=64)
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
