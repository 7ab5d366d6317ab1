"""One run of bench/train_throughput.py, in its own process: the base model written once, then one profile trained
(the reference recipe or the loraops trainer) and measured: tokens/s over the timed steps, peak memory, MFU and the
loss check over the first samples."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
PEAK_BF16_FLOPS = 989e12
LORA = dict(lora_r=64, lora_alpha=16.0, lora_dropout=0.1, lora_target_modules="all-linear")
PROFILES = {
    "auto": {},
    "auto-80": {"memory_budget_gib": 80},
    "auto-40": {"memory_budget_gib": 40},
    "auto-22": {"memory_budget_gib": 22},
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
