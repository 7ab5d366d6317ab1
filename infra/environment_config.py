"""One environment's settings (``EnvironmentConfig``), validated field by field and across fields, and the names
derived from them; ``infra.config`` reads them from ``cdk.json``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from infra.config_sections import EnvironmentIdentity, FineTunedLine, PromotionPeer, ServingConfig
from loraops.naming import AUTO_APPROVAL, MANUAL_APPROVAL, ApprovalPolicy, base_group_name

LOG_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)
_INSTANCE_TYPE = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"


class EnvironmentConfig(EnvironmentIdentity):
    """Settings of one deployment environment (dev, staging, prod, ...)."""

    availability_zones: list[str] = Field(min_length=2, max_length=3)
    vpc_cidr: str = Field(default="10.40.0.0/16", pattern=r"^\d{1,3}(\.\d{1,3}){3}/(1[6-9]|2[0-4])$")
    base_model_id: str = "meta-llama/Llama-2-7b-hf"
    training_instance_type: str = Field(default="ml.g5.2xlarge", pattern=_INSTANCE_TYPE)
    serving_instance_type: str = Field(default="ml.g5.2xlarge", pattern=_INSTANCE_TYPE)
    approval: ApprovalPolicy
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
        groups = self.finetuned_groups
        if len(set(groups)) != len(groups):
            raise ValueError(f"fine_tuned_lines name the same package group twice: {groups}")
        if self.approval == MANUAL_APPROVAL and not self.approvers:
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
        return self.approval == AUTO_APPROVAL

    @property
    def base_group(self) -> str:
        return base_group_name(self.base_model_id)

    @property
    def finetuned_groups(self) -> list[str]:
        """The package group of each fine-tuned line, in ``fine_tuned_lines`` order."""
        return [line.group_name(self.base_model_id) for line in self.fine_tuned_lines]

    @property
    def package_groups(self) -> list[str]:
        """The model package groups the registry stack creates: the base's, then each fine-tuned line's."""
        return [self.base_group, *self.finetuned_groups]

    @property
    def execution_role_name(self) -> str:
        return f"{self.prefix}-sagemaker-execution"
