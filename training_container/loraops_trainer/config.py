"""Typed, validated training configuration from SageMaker hyperparameters and/or CLI flags.

SageMaker writes every hyperparameter as a string into ``/opt/ml/input/config/hyperparameters.json``
and also passes them as ``--name value`` arguments; both are accepted (CLI wins), in ``snake_case``
or ``kebab-case``. Booleans accept true/false/1/0/yes/no only, so ``--merge_weights False`` is False.
"""

from __future__ import annotations

import argparse
import json
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

HYPERPARAMETERS_FILE = Path("/opt/ml/input/config/hyperparameters.json")
SAGEMAKER_CHECKPOINT_DIR = Path("/opt/ml/checkpoints")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


class ConfigError(ValueError):
    """A hyperparameter is unknown, missing, or has a bad value; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run, with the defaults a SageMaker job gets."""

    # --- where things are (SageMaker channels and folders; plain paths locally)
    base_model_dir: str = field(default="", metadata={"env": "SM_CHANNEL_BASE", "help": "uncompressed HF folder of the base model"})
    train_path: str = field(default="", metadata={"env": "SM_CHANNEL_TRAINING", "help": "JSONL file or folder of JSONL files"})
    validation_path: str = field(default="", metadata={"env": "SM_CHANNEL_VALIDATION", "help": "optional; else split off the training data"})
    model_dir: str = field(default="", metadata={"env": "SM_MODEL_DIR", "help": "where the artifact is written"})
    output_data_dir: str = field(default="", metadata={"env": "SM_OUTPUT_DATA_DIR", "help": "metrics, plots, samples"})
    checkpoint_dir: str = field(default="", metadata={"help": "checkpoints for resume (default /opt/ml/checkpoints in a job)"})
    # --- lineage
    base_model_id: str = "meta-llama/Llama-2-7b-hf"
    base_model_package_arn: str = ""
    dataset_name: str = "databricks-dolly-15k"
    # --- output
    output_mode: Literal["adapter", "merged", "both"] = "adapter"
    merged_shard_size: str = "2GB"
    # --- model
    quantization: Literal["nf4", "int8", "none"] = "nf4"
    double_quant: bool = True
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    attention: Literal["auto", "packed_varlen", "flex_attention", "sdpa", "eager"] = "auto"
    fused_kernels: Literal["auto", "on", "off"] = "auto"
    lora_r: int = 64
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_target_modules: str = "all-linear"
    gradient_checkpointing: bool = True
    # --- data
    max_seq_length: int = 2048
    categories: str = field(default="", metadata={"help": "comma-separated dolly categories to keep (default all)"})
    validation_fraction: float = 0.05
    # --- optimisation
    tokens_per_step: int = field(default=16384, metadata={"help": "token budget of one packed micro-batch"})
    static_shapes: Literal["auto", "on", "off"] = field(default="auto", metadata={"help": "pad every micro-batch to tokens_per_step (auto: only for flex_attention)"})
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    optimizer: str = "auto"
    max_grad_norm: float = 0.3
    seed: int = 42
    # --- bookkeeping
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    eval_batches: int = 0
    sample_generations: int = 3
    max_new_tokens: int = 64
    experiment_name: str = field(default="", metadata={"help": "SageMaker Experiments / MLflow experiment"})
    artifact_s3_uri: str = field(default="", metadata={"help": "S3 URI model_dir is uploaded to (for tracked artifact links)"})
    mlflow_tracking_uri: str = field(default="", metadata={"env": "MLFLOW_TRACKING_URI"})

    def __post_init__(self) -> None:
        checks = [
            (self.lora_r > 0, "lora_r", "must be > 0"),
            (self.lora_alpha > 0, "lora_alpha", "must be > 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)"),
            (self.max_seq_length >= 16, "max_seq_length", "must be >= 16"),
            (self.tokens_per_step >= self.max_seq_length, "tokens_per_step",
             f"must be >= max_seq_length ({self.max_seq_length}) so every sample fits a micro-batch"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1"),
            (self.epochs > 0, "epochs", "must be > 0"),
            (self.max_steps == -1 or self.max_steps > 0, "max_steps", "must be -1 (use epochs) or > 0"),
            (self.learning_rate > 0, "learning_rate", "must be > 0"),
            (0 <= self.validation_fraction < 1, "validation_fraction", "must be in [0, 1)"),
            (self.logging_steps >= 1 and self.save_steps >= 1, "logging_steps/save_steps", "must be >= 1"),
            (bool(self.lora_target_modules.strip()), "lora_target_modules", "must not be empty"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ConfigError(f"hyperparameter '{name}': {message}")

    @property
    def category_filter(self) -> list[str]:
        return [c.strip() for c in self.categories.split(",") if c.strip()]

    @property
    def target_modules(self) -> str | list[str]:
        value = self.lora_target_modules.strip()
        return value if value == "all-linear" else [m.strip() for m in value.split(",") if m.strip()]

    @property
    def writes_adapter(self) -> bool:
        return self.output_mode in ("adapter", "both")

    @property
    def writes_merged(self) -> bool:
        return self.output_mode in ("merged", "both")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"hyperparameter '{name}': expected true/false, got {value!r}")


def _convert(name: str, annotation: Any, value: Any) -> Any:
    hint = annotation
    if hint is bool:
        return parse_bool(name, value)
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"hyperparameter '{name}': expected a number, got {value!r}")
        try:
            number = float(value)
            if hint is int:
                if number != int(number):
                    raise ValueError
                return int(number)
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"hyperparameter '{name}': expected {hint.__name__}, got {value!r}") from None
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        text = str(value).strip()
        if text not in choices:
            raise ConfigError(f"hyperparameter '{name}': expected one of {', '.join(choices)}, got {value!r}")
        return text
    if hint is str:
        return str(value)
    raise ConfigError(f"hyperparameter '{name}': unsupported type {hint}")  # pragma: no cover


def _read_hyperparameters(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    # SageMaker adds its own entries (sagemaker_*), which are not ours to validate.
    return {k: v for k, v in data.items() if not k.startswith("sagemaker_")}


def _cli_arguments(argv: list[str]) -> dict[str, Any]:
    names = {f.name for f in fields(TrainConfig)}
    parser = argparse.ArgumentParser(prog="train", description="loraops QLoRA trainer", allow_abbrev=False)
    parser.add_argument("--hyperparameters-file", default=None, help=f"default {HYPERPARAMETERS_FILE} if present")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flags = sorted({f"--{f.name}", f"--{f.name.replace('_', '-')}"})
        parser.add_argument(*flags, dest=f.name, default=None, help=f.metadata.get("help", str(hints[f.name])))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown}; known hyperparameters: {', '.join(sorted(names))}")
    return vars(args)


def build_config(raw: dict[str, Any]) -> TrainConfig:
    """A validated config from name -> value (strings are converted to each field's type)."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"unknown hyperparameter(s) {unknown}")
    return TrainConfig(**{name: _convert(name, hints[name], value) for name, value in raw.items()})


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> TrainConfig:
    """Defaults <- SageMaker environment <- hyperparameters.json <- CLI flags."""
    environ = dict(os.environ) if environ is None else environ
    cli = _cli_arguments(list(argv or []))
    hp_file = Path(cli.pop("hyperparameters_file") or HYPERPARAMETERS_FILE)
    from_file = _read_hyperparameters(hp_file)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise ConfigError(f"{hp_file}: unknown hyperparameter(s) {unknown}")

    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        raw: Any = MISSING
        if f.metadata.get("env") and environ.get(f.metadata["env"]):
            raw = environ[f.metadata["env"]]
        if f.name in from_file:
            raw = from_file[f.name]
        if cli.get(f.name) is not None:
            raw = cli[f.name]
        if raw is not MISSING:
            values[f.name] = raw
    if not values.get("checkpoint_dir") and "TRAINING_JOB_NAME" in environ:
        values["checkpoint_dir"] = str(SAGEMAKER_CHECKPOINT_DIR)
    config = build_config(values)
    for name in ("base_model_dir", "train_path", "model_dir"):
        if not getattr(config, name):
            env = next(f.metadata.get("env") for f in fields(TrainConfig) if f.name == name)
            raise ConfigError(f"hyperparameter '{name}' is required (flag --{name} or environment {env})")
    return config


