"""What the registration stack reads, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from infra.config_sections import FineTunedLine, ServingConfig
from infra.props import Alerting, PromotionProps
from loraops.naming import ApprovalPolicy


@dataclass(frozen=True, kw_only=True)
class RegistrationProps(Alerting):
    """The bucket and approval the functions work with, the roles named by other policies, the import sources, and,
    where serving is configured, what deploy-on-approval guards (lines, instance types, the execution role)."""

    artifact_bucket_name: str
    approval: ApprovalPolicy
    auto_approve: bool
    base_model_id: str
    fine_tuned_lines: tuple[FineTunedLine, ...]
    base_import_sources: tuple[str, ...]
    hub_token_secret_arn: str | None
    import_base_role_name: str
    promote_role_name: str
    execution_role_name: str
    allowed_instance_types: tuple[str, ...]
    serving: ServingConfig | None
    serving_instance_type: str
    promotion: PromotionProps
