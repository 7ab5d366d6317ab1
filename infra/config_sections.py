"""The sections of an environment's configuration (``infra.environment_config``): a fine-tuned line, the endpoint,
a promotion peer; and the strict model they share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraops import endpoints
from loraops.naming import (
    PROMOTE_FUNCTION,
    OutputMode,
    adapter_group_name,
    check_slug,
    merged_group_name,
    resource_prefix,
)

#: The serving modes and engines are ``loraops.endpoints``' (what the serving stack and deploy-on-approval act on):
#: ``Literal[("a", "b")]`` is ``Literal["a", "b"]``, so configuration accepts exactly those values.
ServingMode = Literal[endpoints.MODES]
ServingEngine = Literal[endpoints.ENGINES]

#: An AWS region name.
REGION_PATTERN = r"^[a-z]{2}(-gov)?-[a-z]+-\d$"


class StrictModel(BaseModel):
    """Unknown keys are errors; a parsed configuration cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FineTunedLine(StrictModel):
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


class ServingConfig(StrictModel):
    """The environment's endpoint (stack ``loraops-<env>-serving``); its model is the S3 prefix ``loraops serve
    pin`` records in SSM (``loraops.endpoints.served_model_parameter``)."""

    mode: ServingMode = Field(
        default=endpoints.INFERENCE_COMPONENTS,
        description="endpoint: one model, merged approvals roll it blue/green; inference-components: a base "
        "component plus one adapter component per approved adapter line",
    )
    engine: ServingEngine = Field(
        default=endpoints.VLLM,
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
        if self.mode == endpoints.INFERENCE_COMPONENTS and self.engine != endpoints.VLLM:
            raise ValueError(
                "adapter inference components are loaded by LMI's vLLM backend (option.enable_lora); "
                "the loraops engine serves adapters mounted beside the model: use mode 'endpoint' with it"
            )
        return self


class EnvironmentIdentity(StrictModel):
    """An environment's name, account and region, and the resource names derived from them alone (the same for the
    environment itself and for its promotion peers, which name them across accounts)."""

    name: str
    account: str = Field(pattern=r"^\d{12}$")
    region: str = Field(pattern=REGION_PATTERN)

    @property
    def prefix(self) -> str:
        """Prefix of stack and resource names: ``loraops-<env>``."""
        return resource_prefix(self.name)

    @property
    def artifact_bucket_name(self) -> str:
        """Globally unique, predictable name, so policies in other stacks and accounts can name it literally."""
        return f"{self.prefix}-artifacts-{self.account}-{self.region}"

    @property
    def promote_role_name(self) -> str:
        """The role of the environment's promote function, named so a promotion source can grant it."""
        return f"{self.prefix}-{PROMOTE_FUNCTION}"


class PromotionPeer(EnvironmentIdentity):
    """The other end of a promotion (``promote_from``): an environment's name, account and region."""
