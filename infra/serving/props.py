"""What the serving stack reads, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from infra.config_sections import FineTunedLine, ServingConfig
from infra.props import EnvironmentBasics


@dataclass(frozen=True, kw_only=True)
class ServingProps(EnvironmentBasics):
    """The endpoint's settings and instance type, the role and bucket its model uses, the fine-tuned lines (merged
    lines each take a component's compute)."""

    serving: ServingConfig
    serving_instance_type: str
    fine_tuned_lines: tuple[FineTunedLine, ...]
    execution_role_name: str
    artifact_bucket_name: str
