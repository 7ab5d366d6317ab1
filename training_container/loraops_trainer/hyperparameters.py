"""Reading a run's settings: from SageMaker's channels, ``hyperparameters.json`` and CLI flags, validated up front.

Two groups of settings, both accepted as hyperparameters:

- :class:`~loraops_trainer.settings.TrainConfig`: what loraops adds (locations, lineage, output mode, quantization,
  LoRA, data, packing);
- every field of transformers' ``TrainingArguments`` (``learning_rate``, ``num_train_epochs``, ``optim``, ...),
  with loraops' defaults (:data:`~loraops_trainer.training_arguments.TRAINING_DEFAULTS`), except the few that loraops
  derives itself (:data:`~loraops_trainer.training_arguments.DERIVED_TRAINING_ARGUMENTS`).

transformers' ``HfArgumentParser`` parses both. The file and the environment are turned into the same
``--name value`` flags as the command line (environment, then file, then CLI: the last one wins), so one
validation path serves all three. File values may be JSON-encoded, as the SageMaker Python SDK writes them
(``"\\"both\\""``, ``"64"``). Booleans accept yes/no, true/false, t/f, y/n, 1/0 (case-insensitive).
Every error is a :class:`~loraops_trainer.settings.ConfigError` naming the hyperparameter, raised before any model or
data loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from loraops_trainer.memory_profile import apply_memory_profile, gpu_memory_bytes
from loraops_trainer.settings import ConfigError, Settings, TrainConfig
from loraops_trainer.training_arguments import (
    DERIVED_TRAINING_ARGUMENTS,
    RECORDED_TRAINING_ARGUMENTS,
    TRAINING_DEFAULTS,
    derived_training_arguments,
)

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
    if "gradient_checkpointing" in given and "activation_checkpointing" not in given:
        # The user's deprecated alias: transformers reads it (and says it is deprecated) only where the new name
        # is unset, and loraops' default sets the new name.
        user_training["activation_checkpointing"] = None
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


def _plain(value: Any) -> Any:
    """An enum (``optim``, ``lr_scheduler_type``) as its value, so the manifest is plain JSON."""
    return getattr(value, "value", value)
