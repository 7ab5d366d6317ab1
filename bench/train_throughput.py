#!/usr/bin/env python3
"""Training throughput on one GPU: the reference QLoRA recipe vs the loraops trainer's memory profiles.

    python bench/train_throughput.py [--repeats 3] [--steps 12] [--profiles reference,auto,auto-80,auto-40,auto-22]

Model: Llama-2-7B shape with random weights (written once to --model-dir), NF4 + double quant, bf16 compute, LoRA
r=64 / alpha 16 / dropout 0.1 on all linear layers, and a Llama-2-class tokenizer: Mistral-7B v0.1's 32k
SentencePiece BPE with byte fallback (``tokenizer.model.v1``, shipped by the ``mistral-common`` package; --tokenizer).
Data: the dolly sample in data/dolly.

- reference: HF Trainer + peft + bitsandbytes, batch 4 padded to the longest sample, grouped by length,
  gradient checkpointing, paged_adamw_32bit (the recipe the issue names). Its order is fixed (group-by-length
  mega-batches from a seeded shuffle, then read sequentially): every run sees the same samples in the same order.
- auto: the loraops trainer as it runs by default (``build_trainer``: padding-free packing, varlen FlashAttention
  with the boundaries in the batch, Liger kernels, fused AdamW, and the auto memory profile on this GPU).
- auto-80 / auto-40 / auto-22: the same code held to 80, 40 and 22 GiB (``memory_budget_gib``: the profile plans
  for it and the run is capped there).

Each run is its own process (clean peak-memory reading; kernel patches never leak into the reference); each profile
runs --repeats times and the median is reported with the spread. Before training, every run scores the same first
16 samples (the reference's first four batches) without updating anything: the loss check compares that with the
padded reference's. Prints a table and writes JSON (default bench/results/train_throughput.json).
Throughput counts non-pad tokens over the timed steps; MFU uses 4*N FLOPs per token at 989 TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# bench/ is not a package: its modules run as scripts, so this script's folder is where Python finds its siblings.
from train_throughput_run import PROFILES, ensure_base_model, run_profile
from train_throughput_summary import print_table, summarize

ROOT = Path(__file__).resolve().parents[1]

TOKENIZER = ROOT / "bench" / ".gpu" / "tokenizer.model.v1"


def run_child(profile: str, repeat: int, args: argparse.Namespace) -> dict:
    result_file = Path(f"/tmp/loraops-bench/{profile}-{repeat}.json")
    result_file.unlink(missing_ok=True)
    steps = args.reference_steps if profile == "reference" else args.steps
    command = [
        sys.executable,
        __file__,
        "--run-profile",
        profile,
        "--result-file",
        str(result_file),
        "--model-dir",
        args.model_dir,
        "--steps",
        str(steps),
        "--warmup",
        str(args.warmup),
        *(["--verbose"] if args.verbose else []),
        *(f"--override={o}" for o in args.override),
    ]
    print(f"--- {profile} run {repeat + 1}", flush=True)
    wait_for_free_gpu()
    started = time.time()
    environment = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}  # as loraops-train sets it
    code = subprocess.run(command, env=environment).returncode
    if code != 0 or not result_file.exists():
        return {"profile": profile, "error": f"exit {code}"}
    result = json.loads(result_file.read_text())
    result["wall_seconds"] = time.time() - started
    print(f"    {result['tokens_per_s']:.0f} tokens/s, {result['peak_reserved_gib']:.1f} GiB", flush=True)
    return result


def wait_for_free_gpu(limit_s: float = 120, free_mib: int = 2048) -> None:
    """Until the GPU's memory is free (a finished process's context can linger a moment): every run plans with it."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        used = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
        ).stdout.split()
        if not used or int(used[0]) < free_mib:
            return
        time.sleep(2)
    print(f"    GPU memory still in use after {limit_s:.0f} s: {used[0]} MiB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of the loraops profiles")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=40,
        help="timed steps of the reference (its batches of 4 are short, so it needs more steps for a stable reading)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each profile; the median is reported")
    parser.add_argument("--profiles", default="reference,auto,auto-80,auto-40,auto-22")
    parser.add_argument("--model-dir", default="/tmp/loraops-bench/base-32k")
    parser.add_argument("--shape", choices=["llama2-7b", "llama2-7b-4-layers", "tiny"], default="llama2-7b")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="SentencePiece tokenizer.model of the base")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    parser.add_argument("--merge", action="store_true", help="keep the --out file's other profiles (a second call)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trainer setting for the loraops profiles, e.g. fused_kernels=off",
    )
    parser.add_argument("--verbose", action="store_true", help="print every step's time and memory")
    parser.add_argument("--build-base", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-profile", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_profile:  # child process: one run of one profile
        result = run_profile(args.run_profile, args)
        Path(args.result_file).write_text(json.dumps(result))
        return 0

    if args.build_base:  # child process: write the base model (its GPU memory is gone when it exits)
        ensure_base_model(Path(args.model_dir), args.shape, args.tokenizer if args.tokenizer.is_file() else None)
        return 0
    build = [sys.executable, __file__, "--build-base", "--model-dir", args.model_dir, "--shape", args.shape]
    subprocess.run([*build, "--tokenizer", str(args.tokenizer)], check=True)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if args.merge and out.is_file() else {"results": []}
    runs = {r["profile"]: list(r.get("runs", [])) for r in previous["results"]}  # --merge: earlier calls' runs
    for profile in args.profiles.split(","):
        runs.setdefault(profile, []).extend(run_child(profile, repeat, args) for repeat in range(args.repeats))
    reference = summarize("reference", runs["reference"], None) if runs.get("reference") else None
    summaries = {p: reference if p == "reference" else summarize(p, r, reference) for p, r in runs.items() if r}
    ordered = [summaries[p] for p in ["reference", *PROFILES] if p in summaries]
    print_table(ordered)
    out.parent.mkdir(parents=True, exist_ok=True)
    commands = [*previous.get("commands", []), " ".join(sys.argv)]
    out.write_text(json.dumps({"commands": commands, "results": ordered}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all("error" not in r for r in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
