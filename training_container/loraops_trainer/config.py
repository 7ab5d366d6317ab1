"""Training settings from SageMaker's channels, ``hyperparameters.json`` and CLI flags, validated up front.

Two groups of settings, both accepted as hyperparameters:

- :class:`TrainConfig`: what loraops adds (locations, lineage, output mode, quantization, LoRA, data, packing);
- every field of transformers' ``TrainingArguments`` (``learning_rate``, ``num_train_epochs``, ``optim``, ...),
  with loraops' defaults (:data:`TRAINING_DEFAULTS`), except the few that loraops derives itself
  (:data:`DERIVED_TRAINING_ARGUMENTS`).

transformers' ``HfArgumentParser`` parses both. The file and the environment are turned into the same
``--name value`` flags as the command line (environment, then file, then CLI: the last one wins), so one
validation path serves all three. File values may be JSON-encoded, as the SageMaker Python SDK writes them
(``"\\"both\\""``, ``"64"``). Booleans accept yes/no, true/false, t/f, y/n, 1/0 (case-insensitive).
Every error is a :class:`ConfigError` naming the hyperparameter, raised before any model or data loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loraops.naming import OutputMode

HYPERPARAMETERS_FILE = Path("/opt/ml/input/config/hyperparameters.json")
SAGEMAKER_CHECKPOINT_DIR = Path("/opt/ml/checkpoints")

#: Locations that a SageMaker job passes through the environment.
ENVIRONMENT_DEFAULTS = {
    "base_model_dir": "SM_CHANNEL_BASE",
    "train_path": "SM_CHANNEL_TRAINING",
    "validation_path": "SM_CHANNEL_VALIDATION",
    "model_dir": "SM_MODEL_DIR",
    "output_data_dir": "SM_OUTPUT_DATA_DIR",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
}
REQUIRED = ("base_model_dir", "train_path", "model_dir")
#: Per-machine paths: not hyperparameters of the model, so neither the manifest nor the fingerprint holds them.
LOCATIONS = ("base_model_dir", "train_path", "validation_path", "model_dir", "output_data_dir", "checkpoint_dir")

#: loraops' defaults for transformers' TrainingArguments (a QLoRA recipe, not HF's generic defaults).
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 0.3,
    "logging_steps": 10,
    "save_steps": 200,
    "save_total_limit": 2,
    "gradient_checkpointing": True,
    "seed": 42,
    "ddp_find_unused_parameters": False,
    "disable_tqdm": True,
}
#: TrainingArguments that loraops sets from its own settings; as hyperparameters they are refused, with the
#: setting to use instead.
DERIVED_TRAINING_ARGUMENTS = {
    "output_dir": "checkpoint_dir",
    "per_device_train_batch_size": "tokens_per_step (one item is one packed micro-batch)",
    "bf16": "dtype",
    "fp16": "dtype",
    "use_cpu": "nothing (chosen from the hardware)",
    "ddp_backend": "nothing (gloo on CPU, NCCL on GPUs)",
    "use_liger_kernel": "fused_kernels",
    "liger_kernel_config": "fused_kernels",
    "report_to": "experiment_name / mlflow_tracking_uri",
    "remove_unused_columns": "nothing (the packed batches need every column)",
    "gradient_checkpointing_kwargs": "memory_profile (non-reentrant; every_n_layers from the profile)",
    "activation_checkpointing_kwargs": "memory_profile (non-reentrant; every_n_layers from the profile)",
    "save_strategy": "save_steps",
    "eval_strategy": "validation_path / validation_fraction (evaluated once after training)",
    "logging_nan_inf_filter": "max_nonfinite_steps",
    "train_sampling_strategy": "seed (the packed micro-batches are shuffled once, the same for any process count)",
}
#: What the manifest records of TrainingArguments besides whatever the user set.
RECORDED_TRAINING_ARGUMENTS = (
    *TRAINING_DEFAULTS,
    "optim",
    "warmup_steps",
    "weight_decay",
    "gradient_accumulation_steps",
    "max_steps",
)


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
    output_mode: Literal["adapter", "merged", "both"] = "adapter"
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
        if self.output_mode == "both":
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


class _Parser:
    """transformers' HfArgumentParser over both groups, raising ConfigError instead of exiting."""

    def __init__(self) -> None:
        from transformers import HfArgumentParser, TrainingArguments

        class Parser(HfArgumentParser):
            def error(self, message: str):  # argparse would print usage and exit
                raise ConfigError(_hyperparameter_message(message))

        self.parser = Parser(
            (TrainConfig, TrainingArguments),
            prog="loraops-train",
            allow_abbrev=False,
            description="loraops QLoRA trainer (SageMaker training contract)",
        )
        self.parser.set_defaults(**TRAINING_DEFAULTS)
        self.parser.add_argument(
            "--hyperparameters-file",
            "--hyperparameters_file",
            default=None,
            help=f"SageMaker hyperparameters (default {HYPERPARAMETERS_FILE} if present)",
        )
        self.training_names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
        self.config_names = {f.name for f in dataclasses.fields(TrainConfig)}


def _hyperparameter_message(message: str) -> str:
    """``argument --lora_r/--lora-r: invalid int value: '1.5'`` -> ``hyperparameter 'lora_r': ...``."""
    match = re.match(r"argument --([\w]+)[^:]*: (.*)", message, re.S)
    return f"hyperparameter '{match.group(1)}': {match.group(2)}" if match else message


def decode_sagemaker_value(value: Any) -> str:
    """A hyperparameters.json value as a flag value: JSON-encoded strings (the SageMaker SDK's) decoded."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


#: Prefixes of hyperparameters that SageMaker itself adds: the training toolkit's (``sagemaker_program``,
#: ``sagemaker_torch_distributed_enabled``, ...) and a hyperparameter tuning job's (``_tuning_objective_metric``, ...).
SAGEMAKER_PREFIXES = ("sagemaker_", "_tuning_")


def _sagemaker_own(name: str) -> bool:
    return name.startswith(SAGEMAKER_PREFIXES)


def _without_sagemaker_flags(cli: list[str]) -> list[str]:
    """The command line without ``--sagemaker_*``/``--_tuning_*`` flags and their values (the toolkit passes every
    hyperparameter it does not know as a flag)."""
    rest, skip = [], False
    for item in cli:
        if skip:
            skip = False
            continue
        name, equals, _ = item.partition("=")
        if name.startswith("--") and _sagemaker_own(name[2:]):
            skip = not equals
            continue
        rest.append(item)
    return rest


def read_hyperparameters(path: Path) -> dict[str, str]:
    """The user's entries of a SageMaker hyperparameters file (SageMaker's own, :data:`SAGEMAKER_PREFIXES`, left
    out)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return {k: decode_sagemaker_value(v) for k, v in data.items() if not _sagemaker_own(k)}


def check_launch(environ: dict[str, str]) -> None:
    """Refuse a job of several instances (the toolkit's ``SM_HOSTS``) started without a distributed launch: each
    host would train its own copy of the model and publish it."""
    try:
        hosts = json.loads(environ.get("SM_HOSTS") or "[]")
    except json.JSONDecodeError:
        hosts = []
    world_size = int(environ.get("WORLD_SIZE") or 1)
    if len(hosts) > 1 and world_size < len(hosts):
        raise ConfigError(
            f"this job has {len(hosts)} instances (SM_HOSTS) but {world_size} training process(es) in all: start it "
            "with the training toolkit's distributed launch (hyperparameter sagemaker_torch_distributed_enabled=true, "
            "the SageMaker SDK's distribution torch_distributed), or use one instance"
        )


def _flags(values: dict[str, str]) -> list[str]:
    return [item for name, value in values.items() for item in (f"--{name}", value)]


def _given_names(argv: list[str]) -> set[str]:
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def _check_finite(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"hyperparameter '{name}': must be a finite number, got {value}")


def _check_training_values(training: dict[str, Any]) -> None:
    checks = [
        (training["num_train_epochs"] > 0, "num_train_epochs", "must be > 0"),
        (training["max_steps"] == -1 or training["max_steps"] > 0, "max_steps", "must be -1 (use epochs) or > 0"),
        (training["learning_rate"] > 0, "learning_rate", "must be > 0"),
        (training["max_grad_norm"] >= 0, "max_grad_norm", "must be >= 0 (0 turns clipping off)"),
        (training["weight_decay"] >= 0, "weight_decay", "must be >= 0"),
        (training["warmup_steps"] >= 0, "warmup_steps", "must be >= 0"),
        (training["gradient_accumulation_steps"] >= 1, "gradient_accumulation_steps", "must be >= 1"),
        (training["logging_steps"] > 0, "logging_steps", "must be > 0"),
        (training["save_steps"] > 0, "save_steps", "must be > 0"),
        (0 <= training["seed"] < 2**32, "seed", "must be in [0, 2**32)"),
    ]
    for ok, name, message in checks:
        if not ok:
            raise ConfigError(f"hyperparameter '{name}': {message}")


def derived_training_arguments(config: TrainConfig, every_n_layers: int = 1) -> dict[str, Any]:
    """The TrainingArguments loraops sets itself (see :data:`DERIVED_TRAINING_ARGUMENTS`)."""
    import torch

    from loraops_trainer.model import fused_kernels_enabled

    cuda = torch.cuda.is_available()
    return {
        "output_dir": config.checkpoint_dir,
        "per_device_train_batch_size": 1,
        "bf16": cuda and config.dtype in ("auto", "bfloat16"),
        "fp16": False,
        # Without use_cpu, accelerate stays at DistributedType.NO under torchrun on CPU and each rank trains
        # its own copy; with it, gloo DDP keeps the ranks identical.
        "use_cpu": not cuda,
        "ddp_backend": "gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        "use_liger_kernel": fused_kernels_enabled(config),
        "liger_kernel_config": {
            "rope": True,
            "rms_norm": True,
            "swiglu": True,
            "cross_entropy": False,
            "fused_linear_cross_entropy": True,
        },
        "report_to": "none",  # tracking callbacks are added by loraops_trainer.tracking (fail-safe)
        "remove_unused_columns": False,
        "activation_checkpointing_kwargs": {"use_reentrant": False, "every_n_layers": every_n_layers},
        "save_strategy": "steps",
        "eval_strategy": "no",
        "logging_nan_inf_filter": False,  # a NaN loss must be seen (guards.py), not averaged away
        "train_sampling_strategy": "sequential",
    }


def _split_hyperparameters_file(cli: list[str]) -> tuple[Path, list[str]]:
    """The ``--hyperparameters-file`` flag (or the SageMaker default) and the remaining arguments."""
    rest, path = [], None
    items = iter(cli)
    for item in items:
        name, _, inline = item.partition("=")
        if name in ("--hyperparameters-file", "--hyperparameters_file"):
            path = inline or next(items, None)
            if not path:
                raise ConfigError("--hyperparameters-file needs a path")
        else:
            rest.append(item)
    return Path(path) if path else HYPERPARAMETERS_FILE, rest


def default_checkpoint_dir(model_dir: str, environ: dict[str, str]) -> str:
    """Where SageMaker syncs checkpoints inside a job; beside the model folder elsewhere (kept after the run,
    so a run that fails late can be resumed)."""
    if "TRAINING_JOB_NAME" in environ:
        return str(SAGEMAKER_CHECKPOINT_DIR)
    return str(Path(model_dir).with_name(Path(model_dir).name + ".checkpoints"))


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults <- SageMaker environment <- hyperparameters.json <- CLI flags, all validated."""
    from transformers import TrainingArguments

    environ = dict(os.environ) if environ is None else environ
    hp_file, cli = _split_hyperparameters_file(list(argv or []))
    cli = _without_sagemaker_flags(cli)
    check_launch(environ)
    from_file = read_hyperparameters(hp_file)
    from_environment = {name: environ[var] for name, var in ENVIRONMENT_DEFAULTS.items() if environ.get(var)}
    given = _given_names(_flags(from_file)) | _given_names(cli)
    for name in sorted(given & set(DERIVED_TRAINING_ARGUMENTS)):
        raise ConfigError(f"hyperparameter '{name}' is set by loraops; use {DERIVED_TRAINING_ARGUMENTS[name]}")

    parsed = _Parser()
    namespace, unknown = parsed.parser.parse_known_args([*_flags(from_environment), *_flags(from_file), *cli])
    if unknown:
        raise ConfigError(f"unknown hyperparameter(s) {unknown}; see loraops-train --help")
    values = vars(namespace)
    _check_finite(values)
    config = TrainConfig(**{k: values[k] for k in parsed.config_names})
    for name in REQUIRED:
        if not getattr(config, name):
            raise ConfigError(
                f"hyperparameter '{name}' is required (flag --{name} or environment {ENVIRONMENT_DEFAULTS[name]})"
            )
    if not config.checkpoint_dir:
        config = dataclasses.replace(config, checkpoint_dir=default_checkpoint_dir(config.model_dir, environ))
    user_training = {k: values[k] for k in parsed.training_names if k not in DERIVED_TRAINING_ARGUMENTS}
    _check_training_values(user_training)
    gpu_bytes = gpu_memory_bytes()
    config, user_training, profile = apply_memory_profile(config, user_training, given, gpu_bytes)
    if not gpu_bytes and "tokens_per_step" not in given:
        config = dataclasses.replace(config, tokens_per_step=max(CPU_TOKENS_PER_STEP, config.max_seq_length))
    check_folders(config)
    every_n = profile.recompute_every_n_layers if profile and profile.activation_checkpointing else 1
    try:
        training = TrainingArguments(**user_training, **derived_training_arguments(config, every_n))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"training arguments: {error}") from None
    recorded = sorted(set(RECORDED_TRAINING_ARGUMENTS) | (given & parsed.training_names))
    own = {k: v for k, v in dataclasses.asdict(config).items() if k not in LOCATIONS}
    hyperparameters = {**own, **{k: _plain(getattr(training, k)) for k in recorded}}
    if profile:
        hyperparameters["memory_profile_choice"] = profile.as_dict()
    return Settings(config=config, training=training, hyperparameters=hyperparameters, memory_profile=profile)


#: Micro-batch tokens without a GPU unless set (16,384 makes even a tiny model take seconds and gigabytes a step).
CPU_TOKENS_PER_STEP = 2048


def check_folders(config: TrainConfig) -> None:
    """Refuse a checkpoint or report folder inside the model folder: the published folder must start empty and
    hold only the artifact."""
    model_dir = Path(config.model_dir).absolute()
    for name in ("checkpoint_dir", "output_data_dir"):
        value = getattr(config, name)
        folder = Path(value).absolute() if value else None
        if folder is not None and (folder == model_dir or model_dir in folder.parents):
            raise ConfigError(
                f"hyperparameter '{name}': {value} is inside model_dir {config.model_dir}, which receives only the "
                "artifact; put it beside the model folder"
            )


#: Names under which a user sets recomputation explicitly (the profile then leaves it alone).
CHECKPOINTING_NAMES = {"gradient_checkpointing", "activation_checkpointing"}


def gpu_memory_bytes() -> int:
    """Total memory of this process's GPU (0 without CUDA)."""
    import torch

    return (
        torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if torch.cuda.is_available() else 0
    )


def apply_memory_profile(
    config: TrainConfig, training: dict[str, Any], given: set[str], gpu_bytes: int
) -> tuple[TrainConfig, dict[str, Any], Any]:
    """With ``memory_profile=auto`` on a GPU (``gpu_bytes`` > 0): the profile's micro-batch size and recomputation
    for whatever of them the user did not set. Returns the settings and the profile (None when it did not run)."""
    from loraops_trainer.memory_profile import EVERY_N_LAYERS, ModelShape, choose

    if config.memory_profile != "auto" or gpu_bytes <= 0:
        return config, training, None
    budget = config.memory_budget_gib * 2**30 if config.memory_budget_gib else gpu_bytes
    fixed_tokens = config.tokens_per_step if "tokens_per_step" in given else None
    fixed_recompute = given & CHECKPOINTING_NAMES
    every_n = ((1,) if training.get("gradient_checkpointing") else (0,)) if fixed_recompute else EVERY_N_LAYERS
    try:
        profile = choose(
            ModelShape.from_folder(config.base_model_dir),
            budget,
            min_tokens=fixed_tokens or config.max_seq_length,
            max_tokens=fixed_tokens or 32768,
            quantization=config.quantization,
            lora_rank=config.lora_r,
            every_n_choices=every_n,
        )
    except MemoryError as error:
        raise ConfigError(f"hyperparameter 'memory_budget_gib': {error}") from None
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(f"hyperparameter 'base_model_dir': cannot read the model's shape ({error})") from None
    config = dataclasses.replace(config, tokens_per_step=profile.tokens_per_step)
    if not fixed_recompute:
        training = {**training, "gradient_checkpointing": profile.activation_checkpointing}
    return config, training, profile


def _plain(value: Any) -> Any:
    """An enum (``optim``, ``lr_scheduler_type``) as its value, so the manifest is plain JSON."""
    return getattr(value, "value", value)
