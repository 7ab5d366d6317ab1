"""loraops' own training settings (:class:`TrainConfig`), a validated run (:class:`Settings`) and the one error a bad
setting raises (:class:`ConfigError`).

:mod:`loraops_trainer.hyperparameters` reads them, with transformers' ``TrainingArguments``, from SageMaker's channels,
``hyperparameters.json`` and CLI flags; :mod:`loraops_trainer.training_arguments` holds loraops' defaults for
``TrainingArguments`` and what it sets of them itself; :mod:`loraops_trainer.memory_profile` chooses the micro-batch
size and the recomputation on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from loraops.naming import BOTH, TRAINING_OUTPUTS, OutputMode

#: The ``output_mode`` hyperparameter's choices, from loraops' one vocabulary (``OutputMode`` and ``both``).
TrainingOutput = Literal[TRAINING_OUTPUTS]  # type: ignore[valid-type]


class ConfigError(ValueError):
    """A hyperparameter is unknown, missing, or has a bad value; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    """loraops' own settings (transformers' ``TrainingArguments`` hold the optimisation ones)."""

    # --- where things are (SageMaker channels and folders; plain paths locally)
    base_model_dir: str = field(
        default="", metadata={"help": "uncompressed HF folder of the base model ($SM_CHANNEL_BASE)"}
    )
    train_path: str = field(default="", metadata={"help": "JSONL file or folder of JSONL files ($SM_CHANNEL_TRAINING)"})
    validation_path: str = field(default="", metadata={"help": "optional; else split off the training data"})
    model_dir: str = field(default="", metadata={"help": "where the artifact is published ($SM_MODEL_DIR)"})
    output_data_dir: str = field(default="", metadata={"help": "metrics, plots, samples ($SM_OUTPUT_DATA_DIR)"})
    checkpoint_dir: str = field(default="", metadata={"help": "checkpoints for resume (/opt/ml/checkpoints in a job)"})
    # --- lineage
    base_model_id: str = field(default="meta-llama/Llama-2-7b-hf", metadata={"help": "Hugging Face id of the base"})
    base_model_package_arn: str = ""
    dataset_name: str = "databricks-dolly-15k"
    # --- output
    output_mode: TrainingOutput = OutputMode.ADAPTER.value
    merged_shard_size: str = field(default="2GB", metadata={"help": "largest merged shard, e.g. 2GB or 500MB"})
    # --- model
    quantization: Literal["nf4", "int8", "none"] = "nf4"
    double_quant: bool = True
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    attention: Literal["auto", "packed_varlen", "sdpa", "eager"] = "auto"
    fused_kernels: Literal["auto", "on", "off"] = field(default="auto", metadata={"help": "Liger kernels"})
    lora_r: int = 64
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_target_modules: str = field(default="all-linear", metadata={"help": "all-linear or comma-separated names"})
    # --- data
    max_seq_length: int = 2048
    categories: str = field(default="", metadata={"help": "comma-separated dolly categories to keep (default all)"})
    validation_fraction: float = 0.05
    max_dropped_fraction: float = field(
        default=0.05, metadata={"help": "fail when more of a channel's records are too long for max_seq_length"}
    )
    tokens_per_step: int = field(
        default=16384,
        metadata={
            "help": "token budget of one packed micro-batch (on a GPU the memory profile chooses it unless set; "
            "without a GPU 2048, or max_seq_length if longer)"
        },
    )
    memory_profile: Literal["auto", "off"] = field(
        default="auto",
        metadata={
            "help": "auto: on a GPU, choose tokens_per_step and which layers recompute their activations from the "
            "GPU's memory and the model's shape (explicit settings win); off: the defaults"
        },
    )
    memory_budget_gib: float = field(
        default=0.0, metadata={"help": "GPU memory the run may use (0: all of it); also enforced as a cap"}
    )
    static_shapes: Literal["auto", "on", "off"] = field(
        default="auto", metadata={"help": "pad every micro-batch to tokens_per_step (on); auto and off: no padding"}
    )
    # --- faults
    max_nonfinite_steps: int = field(
        default=0, metadata={"help": "optimizer steps whose loss or gradient is NaN/inf that may be skipped"}
    )
    # --- bookkeeping
    eval_batches: int = field(default=0, metadata={"help": "validation micro-batches to score (0: all)"})
    sample_generations: int = 3
    max_new_tokens: int = 64
    experiment_name: str = field(default="", metadata={"help": "SageMaker Experiments / MLflow experiment"})
    artifact_s3_uri: str = field(default="", metadata={"help": "S3 URI model_dir is uploaded to (tracked links)"})
    mlflow_tracking_uri: str = field(default="", metadata={"help": "MLflow tracking URI ($MLFLOW_TRACKING_URI)"})

    def __post_init__(self) -> None:
        checks = [
            (self.lora_r > 0, "lora_r", "must be > 0"),
            (math.isfinite(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "must be a finite number > 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)"),
            (self.max_seq_length >= 16, "max_seq_length", "must be >= 16"),
            (
                self.tokens_per_step >= self.max_seq_length,
                "tokens_per_step",
                f"must be >= max_seq_length ({self.max_seq_length}) so every sample fits a micro-batch",
            ),
            (0 <= self.validation_fraction < 1, "validation_fraction", "must be in [0, 1)"),
            (0 <= self.max_dropped_fraction <= 1, "max_dropped_fraction", "must be in [0, 1]"),
            (self.max_nonfinite_steps >= 0, "max_nonfinite_steps", "must be >= 0"),
            (self.eval_batches >= 0, "eval_batches", "must be >= 0"),
            (self.sample_generations >= 0, "sample_generations", "must be >= 0"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (bool(self.target_modules), "lora_target_modules", "must name at least one module or be all-linear"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ConfigError(f"hyperparameter '{name}': {message}")
        try:
            from transformers.utils.hub import convert_file_size_to_int

            if convert_file_size_to_int(self.merged_shard_size) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise ConfigError(
                f"hyperparameter 'merged_shard_size': expected a size such as 2GB or 500MB, "
                f"got {self.merged_shard_size!r}"
            ) from None

    @property
    def output_modes(self) -> tuple[OutputMode, ...]:
        """What the run writes, in the one vocabulary the registry uses (``both`` is adapter and merged)."""
        if self.output_mode == BOTH:
            return (OutputMode.ADAPTER, OutputMode.MERGED)
        return (OutputMode(self.output_mode),)

    @property
    def category_filter(self) -> list[str]:
        return [c.strip() for c in self.categories.split(",") if c.strip()]

    @property
    def target_modules(self) -> str | list[str]:
        value = self.lora_target_modules.strip()
        return value if value == "all-linear" else [m.strip() for m in value.split(",") if m.strip()]


@dataclass(frozen=True)
class Settings:
    """A validated run: loraops' settings, transformers' TrainingArguments, and what the manifest records."""

    config: TrainConfig
    training: Any  # transformers.TrainingArguments
    hyperparameters: dict[str, Any]
    memory_profile: Any = None  # loraops_trainer.memory_profile.MemoryProfile, when the auto profile chose
