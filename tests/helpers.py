"""Helpers shared by the test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from loraops.manifest import Manifest
from loraops.naming import OutputMode

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
TRAIN_SCRIPT = ROOT / "training_container" / "train.py"


def adapter_manifest(base_weights_digest: str, **overrides) -> Manifest:
    """A fine-tune manifest as the trainer writes it, for an adapter trained on weights ``base_weights_digest``."""
    fields = dict(
        output_mode=OutputMode.ADAPTER,
        base_model_id="meta-llama/Llama-2-7b-hf",
        base_weights_digest=base_weights_digest,
        dataset_name="databricks-dolly-15k",
        dataset_digest="sha256:" + "d" * 64,
        data={"training": {"records_read": 10, "samples": 9}},
        hyperparameters={"lora_r": 8},
        code_version="loraops test",
    )
    return Manifest(**{**fields, **overrides})


def fast_args(base: Path, model_dir: Path, **overrides) -> list[str]:
    """CLI arguments for a few quick CPU steps on the dolly sample."""
    settings = dict(
        base_model_dir=base,
        train_path=DOLLY,
        model_dir=model_dir,
        quantization="none",
        tokens_per_step=1024,
        max_seq_length=256,
        max_steps=6,
        logging_steps=2,
        save_steps=1000,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        activation_checkpointing="false",
        sample_generations=1,
        max_new_tokens=4,
        learning_rate=1e-3,
        max_dropped_fraction=0.5,
    )
    settings.update(overrides)
    args: list[str] = []
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    return args


def run_train(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as SageMaker would start it."""
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def until_stopped_args(base: Path, model_dir: Path, checkpoint_dir: Path, reports_dir: Path) -> list[str]:
    """CLI arguments for a run that trains until it is stopped (no step limit nor checkpoint reached), logging
    every step into ``reports_dir``."""
    return fast_args(
        base,
        model_dir,
        checkpoint_dir=checkpoint_dir,
        output_data_dir=reports_dir,
        max_steps=100_000,
        save_steps=100_000,
        logging_steps=1,
        sample_generations=0,
    )


def wait_until_training(process: subprocess.Popen, reports_dir: Path, timeout: float = 300) -> None:
    """Until the run in ``process`` has logged two steps; fails if it ends first or takes over ``timeout`` s."""
    metrics = reports_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, f"no two steps logged in {timeout:.0f} s"
        time.sleep(0.1)


def train_in_process(args: list[str], capsys) -> tuple[int, dict | None, str]:
    """``loraops-train`` in this process (no interpreter start-up): exit code, metrics, stderr with the log."""
    import io
    import logging

    from loraops_trainer.cli import main

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code = main(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith('{"metrics"')]
    return code, (json.loads(lines[-1])["metrics"] if lines else None), captured.err + log.getvalue()


def assert_nf4_merge_is_faithful(base, out, device: str) -> None:
    """Load the base as NF4 exactly as training did (on CUDA the weights are cast to bf16 before quantizing,
    which moves some of them into other NF4 buckets), de-quantize it, and compare the merged output against it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # the trainer's compute dtype
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    device_map = {"": 0} if device == "cuda" else None
    nf4 = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, quantization_config=quant, device_map=device_map)
    assert any(type(m).__name__ == "Linear4bit" for m in nf4.modules())
    assert_merged_equals_base_plus_adapter(nf4.dequantize().float(), out, device)


def assert_merged_equals_base_plus_adapter(base_model, out, device: str) -> None:
    """Merged logits match base + unmerged adapter as closely as bf16 storage allows, and the adapter matters.

    The tolerance is measured, not guessed: the exact (fp32) merge, stored in bf16, moves the logits by
    ``rounding``; the shipped merge (computed in bf16, then stored) may cost at most a small multiple of that.
    """
    import copy

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, base_model.config.vocab_size, (2, 48), device=device)
    with torch.no_grad():
        base_logits = base_model(input_ids=ids).logits
        with_adapter = PeftModel.from_pretrained(base_model, str(out / "adapter")).eval()
        expected = with_adapter(input_ids=ids).logits
        exact = copy.deepcopy(with_adapter).merge_and_unload()
        for parameter in exact.parameters():
            parameter.data = parameter.data.to(torch.bfloat16).float()
        rounding = (exact(input_ids=ids).logits - expected).abs().max().item()
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=torch.float32).to(device).eval()
        actual = merged(input_ids=ids).logits
    assert "quantization_config" not in merged.config.to_dict()
    effect = (expected - base_logits).abs().max().item()
    error = (expected - actual).abs().max().item()
    print(
        f"merge check: adapter effect {effect:.4g}, merge error {error:.4g}, bf16 rounding of the exact merge "
        f"{rounding:.4g}"
    )
    assert effect > 10 * rounding, f"the adapter should matter: effect {effect} vs bf16 rounding {rounding}"
    assert error < 3 * rounding + 1e-4, f"merge error {error} vs bf16 rounding of the exact merge {rounding}"
