"""A fine-tune request: what the caller chooses, checked, turned into the fine-tune workflow's execution input.

The workflow (``infra/workflow.py``) reads exactly the keys :meth:`FineTuneRequest.execution_input` writes; it
resolves the newest approved base package itself, so the request names the base model, not a version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loraops import s3_layout
from loraops.naming import OutputMode, adapter_group_name, base_group_name, check_slug, merged_group_name

#: Settings the workflow sets from the request itself; a hyperparameter may not override them.
WORKFLOW_HYPERPARAMETERS = ("base_model_id", "dataset_name", "output_mode", "base_model_package_arn")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
MAX_JOB_NAME = 63


class FineTuneError(ValueError):
    """The request cannot start a fine-tune; nothing was started."""


@dataclass(frozen=True)
class FineTuneRequest:
    model_id: str
    training_uri: str
    output_mode: OutputMode
    dataset: str = "databricks-dolly-15k"
    task: str = "instruction-following"
    validation_uri: str = ""
    hyperparameters: dict[str, str] = field(default_factory=dict)
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = 1
    spot: bool = False
    max_runtime_hours: float = 24.0
    job_name: str = ""

    def __post_init__(self) -> None:
        base_group_name(self.model_id)
        check_slug(self.dataset, "dataset")
        if self.output_mode is OutputMode.ADAPTER:
            check_slug(self.task, "task")
        for what, uri in (("training data", self.training_uri), ("validation data", self.validation_uri)):
            if uri:
                try:
                    s3_layout.split_s3_uri(uri)
                except ValueError as error:
                    raise FineTuneError(f"{what}: {error}") from None
        if not self.training_uri:
            raise FineTuneError("name the training data (an s3:// URI of a JSONL file or prefix)")
        if overridden := sorted(set(self.hyperparameters) & set(WORKFLOW_HYPERPARAMETERS)):
            raise FineTuneError(f"hyperparameters {overridden} are set by the workflow from the request")
        if not _INSTANCE_TYPE.match(self.instance_type):
            raise FineTuneError(f"instance type {self.instance_type!r} is not of the form ml.<family>.<size>")
        if not 1 <= self.instance_count <= 16:
            raise FineTuneError(f"instance count {self.instance_count} is outside 1-16")
        if not 0 < self.max_runtime_hours <= 24 * 5:
            raise FineTuneError(f"max runtime {self.max_runtime_hours} h is outside (0, 120]")
        if self.job_name and not re.match(r"^loraops-[a-zA-Z0-9](-*[a-zA-Z0-9]){0,54}$", self.job_name):
            raise FineTuneError(f"job name {self.job_name!r} must start with 'loraops-' and fit SageMaker's rules")

    @property
    def package_group(self) -> str:
        if self.output_mode is OutputMode.ADAPTER:
            return adapter_group_name(self.model_id, self.task)
        return merged_group_name(self.model_id, self.dataset)

    def name(self, now: datetime | None = None) -> str:
        """``loraops-<mode>-<UTC time>-<6 hex of the request>``: unique per request and second, at most 63."""
        if self.job_name:
            return self.job_name
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
        digest = hashlib.sha256(json.dumps(self._fields(), sort_keys=True).encode()).hexdigest()[:6]
        return f"loraops-{self.output_mode.value}-{stamp}-{digest}"[:MAX_JOB_NAME]

    def execution_input(self, bucket: str, now: datetime | None = None) -> dict[str, Any]:
        """The fine-tune workflow's input (every value a string, number or boolean the workflow passes on)."""
        job = self.name(now)
        runtime = int(self.max_runtime_hours * 3600)
        output_root = s3_layout.training_output_root(self.output_mode, self.package_group)
        stopping: dict[str, int] = {"MaxRuntimeInSeconds": runtime}
        if self.spot:
            stopping["MaxWaitTimeInSeconds"] = runtime * 2  # time waiting for spot capacity included
        return {
            "job_name": job,
            "base_group": base_group_name(self.model_id),
            "package_group": self.package_group,
            "training_uri": self.training_uri,
            **({"validation_uri": self.validation_uri} if self.validation_uri else {}),
            "output_path": s3_layout.s3_uri(bucket, output_root),
            "checkpoint_uri": s3_layout.s3_uri(bucket, s3_layout.checkpoint_prefix(job)),
            "hyperparameters": {
                **{k: str(v) for k, v in self.hyperparameters.items()},
                "base_model_id": self.model_id,
                "dataset_name": self.dataset,
                "output_mode": self.output_mode.value,
            },
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "spot": self.spot,
            "stopping_condition": stopping,
        }

    def _fields(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, OutputMode) else v) for k, v in self.__dict__.items()}


def parse_hyperparameters(pairs: list[str]) -> dict[str, str]:
    """``["lora_r=16", "learning_rate=2e-4"]`` -> ``{"lora_r": "16", ...}`` (the trainer validates the values)."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[a-z_][a-z0-9_]*$", key):
            raise FineTuneError(f"hyperparameter {pair!r} must be name=value")
        result[key] = value
    return result


def validate_hyperparameters(hyperparameters: dict[str, str]) -> None:
    """Check ``hyperparameters`` with the trainer's own settings parser
    (``loraops_trainer.hyperparameters.load_settings``: names, types, ranges, the same code the job runs), before
    anything starts. It imports transformers and torch (about 10 s and 450 MB on a laptop CPU); where the trainer's
    dependencies are absent, say so. The libraries' import-time notes and deprecation warnings are the job's to
    print, not the CLI's: silenced here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _validate(hyperparameters)
    finally:
        logging.disable(previous)


def _validate(hyperparameters: dict[str, str]) -> None:
    try:
        from loraops_trainer.hyperparameters import ENVIRONMENT_DEFAULTS, REQUIRED, load_settings
        from loraops_trainer.settings import ConfigError
    except ImportError as error:
        raise FineTuneError(
            f"checking --hp needs the trainer's settings parser ({error}): pip install 'loraops[train]', "
            "or pass --no-hp-check"
        ) from None
    locations = {ENVIRONMENT_DEFAULTS[name]: f"/opt/ml/loraops-check/{name}" for name in REQUIRED}  # never read
    flags = [item for name, value in hyperparameters.items() for item in (f"--{name}", value)]
    try:
        load_settings(flags, environ=locations)
    except ConfigError as error:
        raise HyperparameterError(str(error)) from None


class HyperparameterError(FineTuneError):
    """A ``--hp`` value the trainer refuses (a usage error)."""
