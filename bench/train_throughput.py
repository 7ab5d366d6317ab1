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

ROOT = Path(__file__).resolve().parents[1]

DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
PEAK_BF16_FLOPS = 989e12
LORA = dict(lora_r=64, lora_alpha=16.0, lora_dropout=0.1, lora_target_modules="all-linear")
TOKENIZER = ROOT / "bench" / ".gpu" / "tokenizer.model.v1"
PROFILES = {
    "auto": {},
    "auto-80": {"memory_budget_gib": 80},
    "auto-40": {"memory_budget_gib": 40},
    "auto-22": {"memory_budget_gib": 22},
}
#: (min MFU, min speed-up vs the reference's median or None, max peak reserved GiB or None)
GOALS = {
    "auto": (0.40, 16.0, None),
    "auto-80": (0.36, None, 80),
    "auto-40": (0.30, None, 40),
    "auto-22": (0.27, None, 22),
}
CHECK_SAMPLES = 16


def parameter_count(config) -> int:
    h, i, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 2 * v * h + layers * per_layer + h


def ensure_base_model(folder: Path, shape: str, tokenizer_model: Path | None) -> Path:
    import torch

    from loraops_trainer.synthetic_base import (
        LLAMA2_7B,
        LLAMA2_7B_4_LAYERS,
        TINY,
        build_base_model,
        dolly_texts,
        sentencepiece_tokenizer,
    )

    if (folder / "config.json").is_file():
        return folder
    start = time.time()
    shapes = {"llama2-7b": LLAMA2_7B, "llama2-7b-4-layers": LLAMA2_7B_4_LAYERS, "tiny": TINY}
    tokenizer = sentencepiece_tokenizer(tokenizer_model) if tokenizer_model else None
    build_base_model(folder, dolly_texts(DOLLY), shapes[shape], dtype=torch.bfloat16, tokenizer=tokenizer)
    print(f"wrote random {shape} base model to {folder} in {time.time() - start:.0f}s", flush=True)
    return folder


def reference_order(lengths: list[int], batch_size: int = 4, seed: int = 0) -> list[int]:
    """Group-by-length as transformers' length-grouped sampler does it (a seeded shuffle, mega-batches of 50
    batches sorted by length), computed once so every run reads the same order."""
    import random

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = 50 * batch_size
    groups = [sorted(order[i : i + mega], key=lambda j: -lengths[j]) for i in range(0, len(order), mega)]
    return [j for group in groups for j in group]


def check_loss(model, batches: list[dict]) -> float:
    """Token-weighted loss over ``batches`` without updating anything (LoRA B starts at zero: the base's loss)."""
    import torch

    from loraops_trainer.data import IGNORE_INDEX

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
            scored = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * scored
            tokens += scored
    model.train()
    return total / tokens


class StepTimer:
    """TrainerCallback timing steps (warmup, warmup+steps] and reading the tokens each step consumed."""

    def __init__(self, warmup: int, steps: int, batch_tokens: list[int], verbose: bool = False) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                import torch

                if verbose:
                    torch.cuda.synchronize()
                    now = time.perf_counter()
                    print(
                        f"step {state.global_step}: {now - timer.last:.2f}s, "
                        f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved",
                        flush=True,
                    )
                    timer.last = now
                if state.global_step in (warmup, warmup + steps):
                    torch.cuda.synchronize()
                    timer.marks[state.global_step] = time.perf_counter()

        self.callback = _Callback()
        self.marks: dict[int, float] = {}
        self.last = time.perf_counter()
        self.warmup, self.steps, self.batch_tokens = warmup, steps, batch_tokens

    def result(self) -> dict[str, float]:
        seconds = self.marks[self.warmup + self.steps] - self.marks[self.warmup]
        tokens = sum(self.batch_tokens[self.warmup : self.warmup + self.steps])
        return {"seconds": seconds, "non_pad_tokens": tokens, "tokens_per_s": tokens / seconds}


def counting(collate, batch_tokens: list[int]):
    """Wrap a collator to record the non-pad tokens of every batch it builds, in order."""

    def wrapped(batch):
        items = [s for item in batch for s in (item if isinstance(item, list) else [item])]
        batch_tokens.append(sum(len(s["input_ids"]) if isinstance(s, dict) else len(s) for s in items))
        return collate(batch)

    return wrapped


def run_reference(model_dir: Path, samples, tokenizer, warmup: int, steps: int):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

    from loraops_trainer.data import Sample
    from loraops_trainer.packing import pad_batch

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(
        model,
        LoraConfig(
            r=64, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
        ),
    )

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return {"input_ids": samples[i].input_ids, "labels": samples[i].labels}

    samples = [samples[i] for i in reference_order([len(s) for s in samples])]
    first = [samples[i : i + 4] for i in range(0, CHECK_SAMPLES, 4)]
    loss = check_loss(model, [pad_batch(batch, tokenizer.pad_token_id) for batch in first])
    batch_tokens: list[int] = []
    timer = StepTimer(warmup, steps, batch_tokens)
    args = TrainingArguments(
        output_dir="/tmp/loraops-bench/reference",
        per_device_train_batch_size=4,
        activation_checkpointing=True,
        train_sampling_strategy="sequential",  # the group-by-length order above, the same every run
        optim="paged_adamw_32bit",
        learning_rate=2e-4,
        max_grad_norm=0.3,
        bf16=True,
        max_steps=warmup + steps,
        num_train_epochs=100,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        data_collator=counting(lambda b: pad_batch([Sample(**row) for row in b], tokenizer.pad_token_id), batch_tokens),
        callbacks=[timer.callback],
    )
    trainer.train()
    return model, {**timer.result(), "check_loss": loss}


def run_loraops(
    model_dir: Path, samples, tokenizer, profile: str, warmup: int, steps: int, overrides: dict[str, str], verbose: bool
):
    from loraops_trainer.hyperparameters import load_settings
    from loraops_trainer.model import add_lora, attention_implementation, fused_kernels_enabled, load_base_model
    from loraops_trainer.run import build_trainer, cap_gpu_memory

    values = dict(
        base_model_dir=str(model_dir),
        train_path=str(DOLLY),
        model_dir="/tmp/loraops-bench/unused",
        checkpoint_dir="/tmp/loraops-bench/ckpt",
        quantization="nf4",
        max_steps=warmup + steps,
        num_train_epochs=100,
        logging_steps=10_000,
        save_steps=10_000,
        max_seq_length=4096,
        **LORA,
        **{**PROFILES[profile], **overrides},
    )
    settings = load_settings([item for k, v in values.items() for item in (f"--{k}", str(v))], environ={})
    config = settings.config
    cap_gpu_memory(config.memory_budget_gib)
    model = add_lora(load_base_model(config), config)
    batch_tokens: list[int] = []
    timer = StepTimer(warmup, steps, batch_tokens, verbose)
    trainer, _, collator = build_trainer(settings, model, tokenizer, samples, [timer.callback])
    ordered = [samples[i] for i in reference_order([len(s) for s in samples])]
    loss = check_loss(trainer.model, [collator([ordered[:CHECK_SAMPLES]])])
    trainer.data_collator = counting(collator, batch_tokens)
    trainer.train()
    extra = {
        "attention": attention_implementation(config),
        "fused_kernels": fused_kernels_enabled(config),
        "tokens_per_step": config.tokens_per_step,
        "activation_checkpointing": bool(settings.training.activation_checkpointing),
        "memory_profile": settings.memory_profile.as_dict() if settings.memory_profile else None,
        **PROFILES[profile],
        **overrides,
    }
    return model, {**timer.result(), "check_loss": loss, "settings": extra}


def run_profile(profile: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoConfig

    from loraops_trainer.data import read_records, tokenize
    from loraops_trainer.inputs import load_tokenizer

    model_dir = Path(args.model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    samples = tokenize(read_records(DOLLY), tokenizer, max_seq_length=4096).samples
    torch.cuda.reset_peak_memory_stats()
    if profile == "reference":
        model, result = run_reference(model_dir, samples, tokenizer, args.warmup, args.steps)
    else:
        overrides = dict(item.split("=", 1) for item in args.override)
        model, result = run_loraops(
            model_dir, samples, tokenizer, profile, args.warmup, args.steps, overrides, args.verbose
        )
    n_params = parameter_count(AutoConfig.from_pretrained(str(model_dir)))
    linear_types = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
    return {
        "profile": profile,
        **result,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "mfu": 4 * n_params * result["tokens_per_s"] / PEAK_BF16_FLOPS,
        "parameters": n_params,
        "linear_layer_types": linear_types,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "commit": os.environ.get("LORAOPS_GIT_SHA", ""),
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
    }


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


def summarize(profile: str, runs: list[dict], reference: dict | None) -> dict:
    """Median and spread over the runs; the goal check against the reference's median."""
    import statistics

    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"profile": profile, "error": runs[0]["error"], "runs": runs}
    speeds = [r["tokens_per_s"] for r in ok]
    median = statistics.median(speeds)
    summary = {
        "profile": profile,
        "runs": ok,
        "failed_runs": len(runs) - len(ok),
        "tokens_per_s_median": median,
        "tokens_per_s_min": min(speeds),
        "tokens_per_s_max": max(speeds),
        "spread_pct": 100 * (max(speeds) - min(speeds)) / median,
        "mfu_median": statistics.median(r["mfu"] for r in ok),
        "peak_reserved_gib_max": max(r["peak_reserved_gib"] for r in ok),
        "check_loss": ok[0]["check_loss"],
        "settings": ok[0].get("settings", {}),
    }
    if reference and "error" not in reference:
        summary["speedup_vs_reference"] = median / reference["tokens_per_s_median"]
        summary["check_loss_vs_reference"] = summary["check_loss"] - reference["check_loss"]
    goal = GOALS.get(profile)
    if goal:
        mfu, speedup, peak = goal
        met = summary["mfu_median"] >= mfu
        met &= speedup is None or summary.get("speedup_vs_reference", 0) >= speedup
        met &= peak is None or summary["peak_reserved_gib_max"] <= peak
        summary["goal"] = {"min_mfu": mfu, "min_speedup": speedup, "max_peak_gib": peak, "met": bool(met)}
    return summary


def print_table(summaries: list[dict]) -> None:
    print(
        f"\n{'profile':<10} {'tokens/s':>9} {'spread':>7} {'x ref':>6} {'peak GiB':>9} {'MFU':>6} {'micro-batch':>12} "
        f"{'recompute':>10} {'loss Δ':>8}  goal"
    )
    for r in summaries:
        if "error" in r:
            print(f"{r['profile']:<10} failed ({r['error']})")
            continue
        settings = r.get("settings", {})
        profile = settings.get("memory_profile") or {}
        recompute = (
            f"{profile.get('recomputed_layers', '-')}" if profile else ("all" if r["profile"] == "reference" else "-")
        )
        goal = r.get("goal")
        goal_text = ""
        if goal:
            parts = [f"MFU >= {goal['min_mfu']:.0%}"]
            parts += [f">= {goal['min_speedup']}x"] if goal["min_speedup"] else []
            parts += [f"<= {goal['max_peak_gib']} GiB"] if goal["max_peak_gib"] else []
            goal_text = f"{', '.join(parts)}: {'met' if goal['met'] else 'MISSED'}"
        print(
            f"{r['profile']:<10} {r['tokens_per_s_median']:>9.0f} {r['spread_pct']:>6.1f}% "
            f"{r.get('speedup_vs_reference', 1.0):>5.1f}x {r['peak_reserved_gib_max']:>9.1f} {r['mfu_median']:>6.1%} "
            f"{settings.get('tokens_per_step', 4 * 0) or 'batch 4':>12} {recompute:>10} "
            f"{r.get('check_loss_vs_reference', 0.0):>+8.4f}  {goal_text}"
        )


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
