"""A tiny base model and tokenizer built by the tests themselves (no downloads), and the dolly copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"
TRAIN_SCRIPT = ROOT / "training_container" / "train.py"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from loraops_trainer.synthetic_base import TINY, build_base_model, dolly_texts

    return build_base_model(tmp_path_factory.mktemp("tiny-base"), dolly_texts(DOLLY), TINY)


@pytest.fixture(scope="session")
def tokenizer(tiny_base):
    from loraops_trainer.run import load_tokenizer

    return load_tokenizer(str(tiny_base))


def fast_args(base: Path, model_dir: Path, **overrides) -> list[str]:
    """CLI arguments for a few quick CPU steps on the dolly sample."""
    settings = dict(base_model_dir=base, train_path=DOLLY, model_dir=model_dir, quantization="none",
                    tokens_per_step=1024, max_seq_length=256, max_steps=6, logging_steps=2, save_steps=1000,
                    lora_r=8, lora_alpha=16, lora_dropout=0.0, gradient_checkpointing="false",
                    sample_generations=1, max_new_tokens=4, learning_rate=1e-3)
    settings.update(overrides)
    args: list[str] = []
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    return args


def run_train(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as SageMaker would start it."""
    return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
