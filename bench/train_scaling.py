#!/usr/bin/env python3
"""Multi-GPU scaling of the loraops trainer under torchrun, side by side with one GPU in the same run.

    python bench/train_scaling.py --gpus 1,2 [--steps 20] [--warmup 3]      # on a machine with 2+ GPUs

Model: Llama-2-7B shape with random weights (written once to --model-dir), NF4 + double quant, bf16 compute,
LoRA r=64 / alpha 16 / dropout 0.1 on all linear layers, 16k-token packed micro-batches, gradient checkpointing:
the trainer's defaults. Tokenizer: a Llama-2-class 32k SentencePiece BPE (``--tokenizer-model``; the
``mistral-common`` package ships one as ``mistral_common/data/tokenizer.model.v1``).

Data: the dolly sample repeated ``--copies`` times, each copy in its own seeded order, as one training file,
so no rank repeats an epoch during the timed steps.

Every N runs the real entry point (``training_container/train.py``) under ``torchrun --nproc_per_node=N`` with
the same global batch: ``max(gpus)`` micro-batches per optimizer step (gradient accumulation ``max(gpus) / N``).
The trainer's sequential sampler over its seeded packing gives every N the same micro-batches in the same
steps, so the loss curves are comparable step by step. Throughput counts the tokens of the micro-batches of the
timed steps (warm-up excluded), computed here with the trainer's own tokenizer and packing (deterministic, and
without padding), so the timed run carries no per-micro-batch token gathering of its own.
Efficiency = (tokens/s of N) / (N x tokens/s of N=1). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
TRAIN = ROOT / "training_container" / "train.py"
PEAK_BF16_FLOPS = 989e12


def ensure_base_model(folder: Path, tokenizer_model: Path, shape: str) -> Path:
    """The 7B shape with the SentencePiece tokenizer; ``tiny`` (a CPU smoke run) with a BPE trained on dolly."""
    import torch

    from loraops_trainer.synthetic_base import LLAMA2_7B, TINY, build_base_model, dolly_texts, sentencepiece_tokenizer

    if (folder / "config.json").is_file():
        return folder
    start = time.time()
    if shape == "tiny":
        build_base_model(folder, dolly_texts(DOLLY), TINY)
    else:
        tokenizer = sentencepiece_tokenizer(tokenizer_model)
        build_base_model(folder, [], LLAMA2_7B, dtype=torch.bfloat16, tokenizer=tokenizer)
    print(f"wrote random {shape}-shaped base to {folder} in {time.time() - start:.0f}s", flush=True)
    return folder


def repeated_dolly(path: Path, copies: int) -> Path:
    """The dolly sample ``copies`` times, each copy shuffled with its own seed."""
    lines = [line for line in DOLLY.read_text().splitlines() if line.strip()]
    out: list[str] = []
    for copy in range(copies):
        order = list(lines)
        random.Random(copy).shuffle(order)
        out += order
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path


def micro_batch_tokens(data: Path, args: argparse.Namespace) -> list[int]:
    """Tokens of each packed micro-batch, in the order the trainer consumes them (same code, same seed)."""
    from loraops_trainer.data import read_records, tokenize
    from loraops_trainer.inputs import load_tokenizer
    from loraops_trainer.packing import PackedDataset

    samples = tokenize(read_records(data), load_tokenizer(args.model_dir), 4096).samples
    dataset = PackedDataset(samples, args.tokens_per_step, seed=42)  # the trainer's default seed
    return [sum(len(s) for s in dataset[i]) for i in range(len(dataset))]


def run(n: int, args: argparse.Namespace, data: Path, accumulation: int, fills: list[int]) -> dict:
    work = Path(args.work_dir) / f"n{n}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    settings = dict(
        base_model_dir=args.model_dir,
        train_path=data,
        model_dir=work / "model",
        checkpoint_dir=work / "checkpoints",
        output_data_dir=work / "reports",
        output_mode="adapter",
        max_steps=args.warmup + args.steps,
        gradient_accumulation_steps=accumulation,
        tokens_per_step=args.tokens_per_step,
        max_seq_length=4096,
        logging_steps=args.logging_steps,
        save_steps=100_000,
        validation_fraction=0,
        sample_generations=0,
        quantization=args.quantization,
    )
    flags = [item for key, value in settings.items() for item in (f"--{key}", str(value))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", str(TRAIN)]
    start = time.time()
    result = subprocess.run([*command, *flags], capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        raise SystemExit(f"N={n} failed:\n{result.stderr[-4000:]}")
    rows = [json.loads(line) for line in (work / "reports" / "metrics.jsonl").read_text().splitlines()]
    logs = {r["step"]: r for r in rows if "loss" in r}
    first, last = logs[args.warmup], logs[args.warmup + args.steps]
    per_step = n * accumulation  # micro-batches of one optimizer step, the same for every N
    tokens = sum(fills[args.warmup * per_step : (args.warmup + args.steps) * per_step])
    seconds = last["time"] - first["time"]
    memory = {
        int(r): float(g)
        for r, g in re.findall(r"rank (\d+) trainable weights \S+ peak GPU memory ([\d.]+) GiB", result.stderr)
    }
    digests = set(re.findall(r"rank \d+ trainable weights (sha256:\w+)", result.stderr))
    return {
        "gpus": n,
        "gradient_accumulation_steps": accumulation,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_gpu": tokens / seconds / n,
        "seconds_per_step": seconds / args.steps,
        "timed_steps": args.steps,
        "timed_tokens": tokens,
        "peak_reserved_gib_per_gpu": memory,
        "ranks_hold_identical_weights": len(digests) == 1,
        "losses": [logs[step]["loss"] for step in sorted(logs)],
        "wall_s": time.time() - start,
    }


def parameter_count(model_dir: str) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    h, i, v, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["vocab_size"],
        config["num_hidden_layers"],
    )
    kv = h * config["num_key_value_heads"] // config["num_attention_heads"]
    return 2 * v * h + layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="1,2", help="comma-separated process counts, e.g. 1,2,4,8")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps (a multiple of --logging-steps)")
    parser.add_argument("--logging-steps", type=int, default=2, help="steps per logged (mean) loss")
    parser.add_argument("--tokens-per-step", type=int, default=16384, help="tokens of one packed micro-batch")
    parser.add_argument("--copies", type=int, default=8, help="copies of the dolly sample in the training file")
    parser.add_argument("--shape", choices=["llama2-7b", "tiny"], default="llama2-7b", help="tiny: a CPU smoke run")
    parser.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    parser.add_argument("--model-dir", default="/tmp/loraops-bench/base-sp")
    parser.add_argument("--tokenizer-model", default=str(ROOT / "bench" / ".gpu" / "tokenizer.model.v1"))
    parser.add_argument("--work-dir", default="/tmp/loraops-bench/scaling")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_scaling.json"))
    args = parser.parse_args()

    gpus = sorted({int(n) for n in args.gpus.split(",")})
    ensure_base_model(Path(args.model_dir), Path(args.tokenizer_model), args.shape)
    data = repeated_dolly(Path(args.work_dir) / "dolly-repeated.jsonl", args.copies)
    if args.warmup % args.logging_steps or args.steps % args.logging_steps:
        raise SystemExit("--warmup and --steps must be multiples of --logging-steps")
    fills = micro_batch_tokens(data, args)
    needed = (args.warmup + args.steps) * max(gpus)
    if len(fills) < needed:
        raise SystemExit(f"{len(fills)} micro-batches, {needed} needed: raise --copies")
    results = [run(n, args, data, max(gpus) // n, fills) for n in gpus]
    single = next(r for r in results if r["gpus"] == 1)
    n_params = parameter_count(args.model_dir)
    for r in results:
        r["speedup"] = r["tokens_per_s"] / single["tokens_per_s"]
        r["efficiency"] = r["speedup"] / r["gpus"]
        r["mfu_per_gpu"] = 4 * n_params * r["tokens_per_s_per_gpu"] / PEAK_BF16_FLOPS
        pairs = list(zip(r["losses"], single["losses"], strict=True))
        r["max_loss_rel_diff_vs_1_gpu"] = max(abs(a - b) / abs(b) for a, b in pairs)

    print(
        f"\n{'GPUs':>4} {'accum':>5} {'tokens/s':>10} {'per GPU':>9} {'speed-up':>8} {'eff.':>6} {'MFU':>6} "
        f"{'peak GiB/GPU':>13} {'loss vs 1 GPU':>14} {'ranks equal':>11}"
    )
    for r in results:
        peak = max(r["peak_reserved_gib_per_gpu"].values(), default=float("nan"))
        print(
            f"{r['gpus']:>4} {r['gradient_accumulation_steps']:>5} {r['tokens_per_s']:>10,.0f} "
            f"{r['tokens_per_s_per_gpu']:>9,.0f} {r['speedup']:>7.2f}x {r['efficiency']:>6.1%} "
            f"{r['mfu_per_gpu']:>6.1%} {peak:>13.1f} {r['max_loss_rel_diff_vs_1_gpu']:>14.2e} "
            f"{str(r['ranks_hold_identical_weights']):>11}"
        )
    import torch

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                "parameters": n_params,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
