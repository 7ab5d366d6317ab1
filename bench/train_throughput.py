#!/usr/bin/env python3
"""Training throughput on one GPU: the reference QLoRA recipe vs the loraops trainer, side by side.

    python bench/train_throughput.py [--steps 20] [--warmup 4] [--profiles reference,default,lean]

Model: Llama-2-7B shape with random weights (written once to --model-dir), NF4 + double quant, bf16
compute, LoRA r=64 / alpha 16 / dropout 0.1 on all linear layers. Data: the dolly sample in data/dolly.

- reference: HF Trainer + peft + bitsandbytes, batch 4 padded to the longest sample, group_by_length,
  gradient checkpointing, paged_adamw_32bit (the recipe the issue names).
- default / lean: the loraops trainer's own code path (``build_trainer``): padding-free packing into
  micro-batches of a token budget, variable-length FlashAttention over the packed samples on CUDA, Liger
  fused kernels, fused AdamW.

Each profile runs in its own process (clean peak-memory reading; kernel patches never leak into the
reference). Prints a table and writes JSON (default bench/results/train_throughput.json).
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
PROFILES = {
    # loraops defaults: 16k-token packed micro-batches, checkpointing, varlen attention, Liger kernels.
    "default": dict(tokens_per_step=16384, gradient_checkpointing=True),
    # For 24 GB cards (ml.g5): smaller micro-batches.
    "lean": dict(tokens_per_step=8192, gradient_checkpointing=True),
}
GOALS = {"default": (15.0, 40.0), "lean": (8.0, 22.0)}  # (min speed-up vs reference, max peak GiB)


def parameter_count(config) -> int:
    h, i, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 2 * v * h + layers * per_layer + h


def ensure_base_model(folder: Path, shape: str) -> Path:
    import torch

    from loraops_trainer.synthetic_base import LLAMA2_7B, LLAMA2_7B_4_LAYERS, TINY, build_base_model, dolly_texts

    if (folder / "config.json").is_file():
        return folder
    start = time.time()
    shapes = {"llama2-7b": LLAMA2_7B, "llama2-7b-4-layers": LLAMA2_7B_4_LAYERS, "tiny": TINY}
    build_base_model(folder, dolly_texts(DOLLY), shapes[shape], dtype=torch.bfloat16)
    print(f"wrote random {shape} base model to {folder} in {time.time() - start:.0f}s", flush=True)
    return folder


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

    batch_tokens: list[int] = []
    timer = StepTimer(warmup, steps, batch_tokens)
    args = TrainingArguments(
        output_dir="/tmp/loraops-bench/reference",
        per_device_train_batch_size=4,
        gradient_checkpointing=True,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
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
    return model, timer.result()


def run_loraops(
    model_dir: Path, samples, tokenizer, profile: str, warmup: int, steps: int, overrides: dict[str, str], verbose: bool
):
    from loraops_trainer.config import load_settings
    from loraops_trainer.model import add_lora, attention_implementation, fused_kernels_enabled, load_base_model
    from loraops_trainer.run import build_trainer

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
    model = add_lora(load_base_model(config), config)
    batch_tokens: list[int] = []
    timer = StepTimer(warmup, steps, batch_tokens, verbose)
    trainer, _, collator = build_trainer(settings, model, tokenizer, samples, [timer.callback])
    trainer.data_collator = counting(collator, batch_tokens)
    trainer.train()
    extra = {
        "attention": attention_implementation(config),
        "fused_kernels": fused_kernels_enabled(config),
        **PROFILES[profile],
        **overrides,
    }
    return model, {**timer.result(), "settings": extra}


def run_profile(profile: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoConfig

    from loraops_trainer.data import read_records, tokenize
    from loraops_trainer.run import load_tokenizer

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
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the loraops profiles")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=60,
        help="timed steps of the reference: its batches of 4 vary widely in length, so it "
        "needs more steps than the packed profiles for a stable reading",
    )
    parser.add_argument("--profiles", default="reference,default,lean")
    parser.add_argument("--model-dir", default="/tmp/loraops-bench/base")
    parser.add_argument("--shape", choices=["llama2-7b", "llama2-7b-4-layers", "tiny"], default="llama2-7b")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trainer setting for the loraops profiles, e.g. fused_kernels=off",
    )
    parser.add_argument("--verbose", action="store_true", help="print every step's time and memory")
    parser.add_argument("--run-profile", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_profile:  # child process: one profile
        result = run_profile(args.run_profile, args)
        Path(args.result_file).write_text(json.dumps(result))
        return 0

    ensure_base_model(Path(args.model_dir), args.shape)
    results = []
    for profile in args.profiles.split(","):
        result_file = Path(f"/tmp/loraops-bench/{profile}.json")
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
        print(f"--- {profile}", flush=True)
        started = time.time()
        code = subprocess.run(command, env=dict(os.environ)).returncode
        if code != 0 or not result_file.exists():
            results.append({"profile": profile, "error": f"exit {code}"})
            continue
        result = json.loads(result_file.read_text())
        result["wall_seconds"] = time.time() - started
        results.append(result)

    reference = next((r for r in results if r["profile"] == "reference" and "error" not in r), None)
    print(f"\n{'profile':<10} {'tokens/s':>10} {'x ref':>7} {'peak GiB':>9} {'MFU':>7}  goal")
    for r in results:
        if "error" in r:
            print(f"{r['profile']:<10} failed ({r['error']})")
            continue
        ratio = r["tokens_per_s"] / reference["tokens_per_s"] if reference else float("nan")
        r["speedup_vs_reference"] = ratio
        goal = GOALS.get(r["profile"])
        if goal:
            r["goal"] = {
                "min_speedup": goal[0],
                "max_peak_gib": goal[1],
                "met": ratio >= goal[0] and r["peak_reserved_gib"] <= goal[1],
            }
        goal_text = "" if not goal else f">= {goal[0]}x, <= {goal[1]} GiB: {'met' if r['goal']['met'] else 'NOT met'}"
        print(
            f"{r['profile']:<10} {r['tokens_per_s']:>10.0f} {ratio:>6.1f}x {r['peak_reserved_gib']:>9.1f} "
            f"{r['mfu']:>6.1%}  {goal_text}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
