"""Serving throughput on one GPU: loraops_serving vs plain transformers ``generate`` + peft, side by side.

Llama-2-7B shape, random bf16 weights, 8 random LoRA adapters (r=64, all linear layers), 128-token prompts from the
dolly sample, 128 new tokens (greedy), batch 1 and 16, for (a) plain weights, (b) base + 1 adapter on every row,
(c) base + 8 distinct adapters mixed in one batch. "Merged" weights have the base's shapes and dtype, so (a) is
timed on the base folder itself. Generated tokens/s counts the tokens each row produced (up to EOS).

    python bench/serve_throughput.py            # writes bench/results/serve_throughput.json and prints a table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
MODULES += ("mlp.up_proj", "mlp.down_proj")


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
                tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=generator) / fan_in**0.5).to(
                    torch.bfloat16
                )
                tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=generator) * 0.01).to(
                    torch.bfloat16
                )
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folders


def prompts(tokenizer, count: int, length: int) -> list[str]:
    """Dolly instructions cut to ``length`` tokens (joined until long enough)."""
    records = [json.loads(line) for line in DOLLY.read_text().splitlines()]
    text = " ".join(f"{r['instruction']} {r['context']}" for r in records)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[k * length : (k + 1) * length]) for k in range(count)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


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
    ordered = sorted(times)
    return {
        "tokens_per_s": tokens / sum(times),
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["llama2-7b", "tiny"], default="llama2-7b")
    parser.add_argument("--work", default="/tmp/loraops-serve-bench")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_throughput.json"))
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraops_serving.engine import Engine, Row
    from loraops_serving.schema import Sampling
    from loraops_serving.settings import ServingSettings

    work = Path(args.work)
    start = time.time()
    base = ensure_base(work / "base", args.shape)
    adapters = write_adapters(base, work / "adapters", 8, 64)
    print(f"base and adapters ready in {time.time() - start:.0f}s", flush=True)
    settings = ServingSettings(max_new_tokens=args.new_tokens, max_batch_size=16, max_resident_adapters=8)
    engine = Engine(base, settings, adapters)
    texts = prompts(engine.tokenizer, 16, args.prompt_tokens)
    names = [a.name for a in adapters]
    layouts = {"a_plain": lambda n: [None] * n, "b_one_adapter": lambda n: [names[0]] * n}
    layouts["c_eight_mixed"] = lambda n: [names[k % 8] for k in range(n)]

    def ours(batch: int, layout: str):
        rows = [Row(t, a, args.new_tokens) for t, a in zip(texts[:batch], layouts[layout](batch))]
        return lambda: sum(g.tokens for g in engine.generate(rows, Sampling()))

    results = []
    for batch in (1, 16):
        for layout in layouts:
            result = timed(ours(batch, layout), args.runs, 1)
            results.append({"impl": "loraops", "layout": layout, "batch": batch, **result})
            print(results[-1], flush=True)

    model = AutoModelForCausalLM.from_pretrained(base, dtype=engine.model.dtype).to(engine.device).eval()
    tokenizer = engine.tokenizer
    eos = tokenizer.eos_token_id

    def hf(batch: int, layout: str, peft_model=None):
        encoded = tokenizer(texts[:batch], return_tensors="pt", padding=True).to(engine.device)
        extra = (
            {"adapter_names": [a or "__base__" for a in layouts[layout](batch)]} if layout == "c_eight_mixed" else {}
        )

        def run() -> int:
            with torch.no_grad():
                out = (peft_model or model).generate(
                    **encoded,
                    max_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    **extra,
                )
            new = out[:, encoded["input_ids"].shape[1] :].tolist()
            return sum(row.index(eos) if eos in row else len(row) for row in new)

        return run

    for batch in (1, 16):
        result = timed(hf(batch, "a_plain"), args.runs, 1)
        results.append({"impl": "transformers+peft", "layout": "a_plain", "batch": batch, **result})
        print(results[-1], flush=True)
    peft_model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for folder in adapters[1:]:
        peft_model.load_adapter(folder, adapter_name=folder.name)
    peft_model.set_adapter(names[0])
    for batch in (1, 16):
        for layout in ("b_one_adapter", "c_eight_mixed"):
            slow = layout == "c_eight_mixed" and batch == 16  # peft's per-adapter loop: one run is enough
            result = timed(hf(batch, layout, peft_model), 1 if slow else args.runs, 0 if slow else 1)
            results.append({"impl": "transformers+peft", "layout": layout, "batch": batch, **result})
            print(results[-1], flush=True)

    def speed(impl: str, layout: str, batch: int) -> float:
        return next(r["tokens_per_s"] for r in results if (r["impl"], r["layout"], r["batch"]) == (impl, layout, batch))

    print(f"\n{'impl':<18} {'layout':<14} {'batch':>5} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7} {'x (a) same impl':>15}")
    for r in results:
        ratio = r["tokens_per_s"] / speed(r["impl"], "a_plain", r["batch"])
        r["x_plain_same_impl"] = ratio
        print(
            f"{r['impl']:<18} {r['layout']:<14} {r['batch']:>5} {r['tokens_per_s']:>8.0f} {r['p50_s']:>7.2f} "
            f"{r['p95_s']:>7.2f} {ratio:>15.2f}"
        )
    summary = {
        "c_over_a_loraops_b16": speed("loraops", "c_eight_mixed", 16) / speed("loraops", "a_plain", 16),
        "a_loraops_over_plain_generate_b16": speed("loraops", "a_plain", 16)
        / speed("transformers+peft", "a_plain", 16),
        "c_loraops_over_peft_mixed_b16": speed("loraops", "c_eight_mixed", 16)
        / speed("transformers+peft", "c_eight_mixed", 16),
    }
    print(json.dumps(summary, indent=2))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    setup = {"shape": args.shape, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
    payload = {"device": device, "setup": setup, "results": results, "summary": summary}
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
