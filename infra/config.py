"""Typed, validated per-environment configuration read from ``cdk.json`` context.

The context key ``loraops:environments`` maps an environment name to its settings. Everything is
validated before any construct is built; an error names the offending key, e.g.
``loraops:environments.prod.region: ...``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from loraops.naming import (
    NamingError,
    OutputMode,
    adapter_group_name,
    base_group_name,
    check_slug,
    merged_group_name,
)

CONTEXT_KEY = "loraops:environments"
ENV_SELECTOR_KEY = "env"

LOG_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)
_INSTANCE_TYPE = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"
_REGION = r"^[a-z]{2}(-gov)?-[a-z]+-\d$"


class ConfigError(ValueError):
    """The cdk.json configuration is missing or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FineTunedLine(_Strict):
    """One fine-tuned model line: a package group that versions its fine-tunes."""

    mode: OutputMode
    dataset: str = Field(description="dataset slug, recorded in the sourceDataset tag")
    task: str | None = Field(default=None, description="task slug; required for adapter lines")

    @field_validator("dataset", "task")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        return None if value is None else check_slug(value, "value")

    @model_validator(mode="after")
    def _task_for_adapters(self) -> FineTunedLine:
        if self.mode is OutputMode.ADAPTER and self.task is None:
            raise ValueError("adapter lines need a 'task' (group <base>-finetuned-<task>)")
        if self.mode is OutputMode.MERGED and self.task is not None:
            raise ValueError("merged lines are named by their dataset; remove 'task'")
        return self

    def group_name(self, base_model_id: str) -> str:
        if self.mode is OutputMode.ADAPTER:
            return adapter_group_name(base_model_id, self.task or "")
        return merged_group_name(base_model_id, self.dataset)


class ServingConfig(_Strict):
    """The environment's endpoint (stack ``loraops-<env>-serving``); its model is the S3 prefix ``loraops serve
    pin`` records in SSM (``loraops.endpoints.served_model_parameter``)."""

    mode: Literal["endpoint", "inference-components"] = Field(
        default="inference-components",
        description="endpoint: one model, merged approvals roll it blue/green; inference-components: a base "
        "component plus one adapter component per approved adapter line",
    )
    engine: Literal["vllm", "loraops"] = Field(
        default="vllm",
        description="vllm: LMI's vLLM backend with LoRA; loraops: loraops_serving in DJL's Python engine",
    )
    min_instances: int = Field(default=1, ge=1, le=20)
    max_instances: int = Field(default=2, ge=1, le=20)
    invocations_per_target: int = Field(
        default=8, ge=1, description="autoscaling target: invocations per minute per instance (or per copy)"
    )
    capture_percent: int = Field(default=20, ge=0, le=100, description="share of requests data capture keeps")
    latency_alarm_ms: int = Field(default=20_000, ge=100, description="p90 model latency that fails a rollout")
    accelerators_per_copy: int = Field(default=1, ge=1, le=8)
    memory_per_copy_mb: int = Field(default=16_384, ge=1024)

    @model_validator(mode="after")
    def _consistent(self) -> ServingConfig:
        if self.max_instances < self.min_instances:
            raise ValueError("max_instances is below min_instances")
        if self.mode == "inference-components" and self.engine != "vllm":
            raise ValueError(
                "adapter inference components are loaded by LMI's vLLM backend (option.enable_lora); "
                "the loraops engine serves adapters mounted beside the model: use mode 'endpoint' with it"
            )
        return self


class PromotionPeer(_Strict):
    """The other end of a promotion (``promote_from``): an environment's name, account and region."""

    name: str
    account: str = Field(pattern=r"^\d{12}$")
    region: str = Field(pattern=_REGION)

    @property
    def bucket(self) -> str:
        return f"loraops-{self.name}-artifacts-{self.account}-{self.region}"

    @property
    def promote_role_name(self) -> str:
        """The role of the promote function of this (target) environment, named so the source can grant it."""
        return f"loraops-{self.name}-promote"


class EnvironmentConfig(_Strict):
    """Settings of one deployment environment (dev, staging, prod, ...)."""

    name: str
    account: str = Field(pattern=r"^\d{12}$")
    region: str = Field(pattern=_REGION)
    availability_zones: list[str] = Field(min_length=2, max_length=3)
    vpc_cidr: str = Field(default="10.40.0.0/16", pattern=r"^\d{1,3}(\.\d{1,3}){3}/(1[6-9]|2[0-4])$")
    base_model_id: str = "meta-llama/Llama-2-7b-hf"
    training_instance_type: str = Field(default="ml.g5.2xlarge", pattern=_INSTANCE_TYPE)
    serving_instance_type: str = Field(default="ml.g5.2xlarge", pattern=_INSTANCE_TYPE)
    approval: Literal["auto", "manual"]
    removal_policy: Literal["destroy", "retain"] = Field(
        description="destroy: `cdk destroy` removes everything, objects included; retain: data outlives its stacks"
    )
    termination_protection: bool = Field(default=False, description="CloudFormation termination protection")
    endpoint_policies: bool = Field(
        default=True, description="VPC endpoints admit only this account's principals (S3: only loraops buckets)"
    )
    vpc_endpoint_only_bucket_access: bool = Field(
        default=False, description="artifact objects readable/writable only through the VPC's S3 endpoint"
    )
    noncurrent_version_days: int = Field(default=30, ge=1, le=3650)
    log_retention_days: int = Field(default=90, description="one of CloudWatch Logs' retention values")
    approvers: list[str] = Field(
        default_factory=list,
        description="IAM principal ARNs that may assume the environment's model-approver role",
    )
    user_profiles: list[str] = Field(default_factory=list)
    base_import_sources: list[str] = Field(
        default_factory=list,
        description="s3://bucket/prefix/ locations the import-base function may copy base models from",
    )
    hub_token_secret_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+$",
        description="Secrets Manager secret holding a Hugging Face token (gated models such as Llama-2)",
    )
    fine_tuned_lines: list[FineTunedLine] = Field(default_factory=list)
    promote_from: str | None = Field(
        default=None,
        description="the environment whose approved packages `loraops models promote` copies here; its bucket and "
        "key grant this environment's promote function read of base/, adapters/ and merged/",
    )
    serving: ServingConfig | None = Field(default=None, description="the endpoint; none: no serving stack")
    tags: dict[str, str] = Field(default_factory=dict)
    # --- operations and guards (issue #21) ---------------------------------------------------------------------
    instance_types: list[str] = Field(
        default_factory=list,
        description="instance types training jobs and endpoint configs may use (IAM sagemaker:InstanceTypes); "
        "empty: training_instance_type and serving_instance_type",
    )
    studio_instance_types: list[str] = Field(
        default_factory=lambda: ["system", "ml.t3.medium", "ml.t3.large", "ml.m5.large", "ml.m5.xlarge"],
        description="instance types Studio apps and spaces may name (IAM sagemaker:InstanceTypes on CreateApp/"
        "CreateSpace); an app that names none gets the domain's default",
    )
    alarm_topic_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]+$",
        description="SNS topic the operations alarms notify; none: a topic loraops-<env>-alarms is created",
    )
    alarm_email: str | None = Field(
        default=None,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        description="address subscribed to the created alarm topic (ignored with alarm_topic_arn)",
    )
    # --- end operations and guards -----------------------------------------------------------------------------

    @field_validator("availability_zones")
    @classmethod
    def _azs(cls, zones: list[str]) -> list[str]:
        if len(set(zones)) != len(zones):
            raise ValueError("availability zones must be distinct")
        return zones

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, days: int) -> int:
        if days not in LOG_RETENTION_DAYS:
            raise ValueError(f"must be one of CloudWatch Logs' retention values {sorted(LOG_RETENTION_DAYS)}")
        return days

    @field_validator("region")
    @classmethod
    def _images_in_region(cls, region: str) -> str:
        from loraops.images import ImageError, image_uri

        try:
            image_uri("training", region)
        except ImageError as error:
            raise ValueError(str(error)) from None
        return region

    @field_validator("base_model_id")
    @classmethod
    def _base_model(cls, model_id: str) -> str:
        base_group_name(model_id)
        return model_id

    @field_validator("instance_types", "studio_instance_types")
    @classmethod
    def _instance_types(cls, types: list[str]) -> list[str]:
        for value in types:
            if value != "system" and not re.match(_INSTANCE_TYPE, value):
                raise ValueError(f"instance type {value!r} is not of the form ml.<family>.<size>")
        return types

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, arns: list[str]) -> list[str]:
        for arn in arns:
            if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:(root|role/[\w+=,.@/-]+|user/[\w+=,.@/-]+)$", arn):
                raise ValueError(f"approver {arn!r} is not an IAM role, user or account-root ARN")
        return arns

    @field_validator("base_import_sources")
    @classmethod
    def _import_sources(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([\w.!*'()/-]+/)?$", uri):
                raise ValueError(f"import source {uri!r} must be s3://<bucket>/ or s3://<bucket>/<prefix>/")
        return uris

    @field_validator("user_profiles")
    @classmethod
    def _profiles(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", name):
                raise ValueError(f"user profile name {name!r} is not valid for SageMaker")
        if len(set(names)) != len(names):
            raise ValueError("user profile names must be distinct")
        return names

    @model_validator(mode="after")
    def _cross_checks(self) -> EnvironmentConfig:
        for zone in self.availability_zones:
            if not zone.startswith(self.region):
                raise ValueError(f"availability zone {zone!r} is not in region {self.region!r}")
        groups = [line.group_name(self.base_model_id) for line in self.fine_tuned_lines]
        if len(set(groups)) != len(groups):
            raise ValueError(f"fine_tuned_lines name the same package group twice: {groups}")
        if self.approval == "manual" and not self.approvers:
            raise ValueError(
                "approval is 'manual' but no 'approvers' are named: list the IAM role, user or account-root ARNs "
                "that may approve packages (otherwise any administrator can)"
            )
        for what in ("training_instance_type", "serving_instance_type"):
            if self.instance_types and getattr(self, what) not in self.instance_types:
                raise ValueError(f"{what} {getattr(self, what)!r} is not in instance_types {self.instance_types}")
        return self

    #: Set by :func:`load_environments` from ``promote_from`` (the source) and the other environments' (targets).
    _promotion_source: PromotionPeer | None = PrivateAttr(default=None)
    _promotion_targets: tuple[PromotionPeer, ...] = PrivateAttr(default=())

    @property
    def promotion_source(self) -> PromotionPeer | None:
        return self._promotion_source

    @property
    def promotion_targets(self) -> tuple[PromotionPeer, ...]:
        """The environments that promote from this one (``promote_from`` names it)."""
        return self._promotion_targets

    @property
    def promote_role_name(self) -> str:
        return f"{self.prefix}-promote"

    @property
    def import_base_role_name(self) -> str:
        return f"{self.prefix}-import-base"

    @property
    def dataset_upload_role_name(self) -> str:
        return f"{self.prefix}-dataset-upload"

    @property
    def allowed_instance_types(self) -> list[str]:
        """The IAM allow-list of instance types (``sagemaker:InstanceTypes``) of jobs and endpoint configs."""
        return sorted(set(self.instance_types) or {self.training_instance_type, self.serving_instance_type})

    @property
    def auto_approve(self) -> bool:
        return self.approval == "auto"

    @property
    def base_group(self) -> str:
        return base_group_name(self.base_model_id)

    @property
    def artifact_bucket_name(self) -> str:
        """Globally unique, predictable name, so policies in other stacks can name it literally."""
        return f"{self.prefix}-artifacts-{self.account}-{self.region}"

    @property
    def execution_role_name(self) -> str:
        return f"{self.prefix}-sagemaker-execution"

    @property
    def prefix(self) -> str:
        """Prefix of stack and resource names: ``loraops-<env>``."""
        return f"loraops-{self.name}"


def _format_errors(env: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in (CONTEXT_KEY, env, *item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_environment(name: str, raw: Any) -> EnvironmentConfig:
    """Validate one environment's raw context dict."""
    if not re.match(r"^[a-z][a-z0-9]{0,15}$", name):
        raise ConfigError(f"{CONTEXT_KEY}.{name}: environment names are 1-16 lowercase letters/digits")
    if not isinstance(raw, dict):
        raise ConfigError(f"{CONTEXT_KEY}.{name}: expected an object, got {type(raw).__name__}")
    try:
        return EnvironmentConfig(name=name, **raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(name, error)) from None
    except (NamingError, TypeError) as error:
        raise ConfigError(f"{CONTEXT_KEY}.{name}: {error}") from None


def load_environments(context: dict[str, Any], selected: str | None = None) -> list[EnvironmentConfig]:
    """All configured environments, or only ``selected`` (from ``-c env=<name>``)."""
    raw = context.get(CONTEXT_KEY)
    if raw is None:
        raise ConfigError(f"The CDK context key: {CONTEXT_KEY} is undefined.")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{CONTEXT_KEY}: expected a non-empty object of environments")
    if selected is not None:
        if selected not in raw:
            known = ", ".join(sorted(raw))
            raise ConfigError(f"-c {ENV_SELECTOR_KEY}={selected}: unknown environment (configured: {known})")
        check_no_shared_account_region(raw)
        return [link_promotions(parse_environment(selected, raw[selected]), raw)]
    environments = [parse_environment(name, value) for name, value in raw.items()]
    check_no_shared_account_region(raw)
    return [link_promotions(config, raw) for config in environments]


def _peer(name: str, raw: Any, where: str) -> PromotionPeer:
    try:
        return PromotionPeer(name=name, account=raw.get("account"), region=raw.get("region"))
    except ValidationError as error:
        raise ConfigError(f"{where}: environment {name!r} has no valid account and region ({error})") from None


def link_promotions(config: EnvironmentConfig, raw: dict[str, Any]) -> EnvironmentConfig:
    """Resolve ``promote_from`` in both directions from the raw context (also when one environment is selected):
    the target learns its source's account and region, the source the targets it grants read to."""
    where = f"{CONTEXT_KEY}.{config.name}.promote_from"
    if config.promote_from is not None:
        if config.promote_from == config.name or not isinstance(raw.get(config.promote_from), dict):
            known = ", ".join(sorted(n for n in raw if n != config.name))
            raise ConfigError(f"{where}: {config.promote_from!r} is not another environment (configured: {known})")
        config._promotion_source = _peer(config.promote_from, raw[config.promote_from], where)
    config._promotion_targets = tuple(
        _peer(name, env, f"{CONTEXT_KEY}.{name}.promote_from")
        for name, env in sorted(raw.items())
        if isinstance(env, dict) and env.get("promote_from") == config.name and name != config.name
    )
    return config


def check_no_shared_account_region(raw: dict[str, Any]) -> None:
    """Registry names (package groups, collections) are per account and region, not per environment: two
    environments there would share them, so loraops refuses the configuration rather than scope every name."""
    seen: dict[tuple[Any, Any], str] = {}
    for name, env in raw.items():
        if not isinstance(env, dict):
            continue
        other = seen.setdefault((env.get("account"), env.get("region")), name)
        if other != name:
            raise ConfigError(
                f"{CONTEXT_KEY}: environments {other!r} and {name!r} share account {env.get('account')} and region "
                f"{env.get('region')}; their model package groups and collections would collide. Give each "
                "environment its own account or region"
            )
