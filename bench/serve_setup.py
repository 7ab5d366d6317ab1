"""What the serving bench (``serve_throughput.py``) runs on: the synthetic base and adapters, the dolly prompts
and requests, and the timing helpers."""

from __future__ import annotations

import json
import random
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


def open_texts(tokenizer, count: int, seed: int, max_prompt: int, max_new: int) -> list[tuple[str, int]]:
    """The requests of :func:`open_requests` as prompt texts (what a client sends)."""
    return [(tokenizer.decode(ids, skip_special_tokens=True), new) for ids, new in open_requests(
        tokenizer, count, seed, max_prompt, max_new)]  # fmt: skip


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
