"""Registry: model package groups for the base model and each configured fine-tuned line."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.config import EnvironmentConfig
from loraops.naming import TAG_APPROVAL_POLICY, base_group_tags, finetuned_group_tags


def _tags(tags: dict[str, str]) -> list[cdk.CfnTag]:
    return [cdk.CfnTag(key=k, value=v) for k, v in sorted(tags.items())]


class RegistryStack(cdk.Stack):
    """One package group per base model (``<org>--<model>``) and per fine-tuned line."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        approval = {TAG_APPROVAL_POLICY: config.approval}

        self.base_group = sagemaker.CfnModelPackageGroup(
            self,
            "BaseModelGroup",
            model_package_group_name=config.base_group,
            model_package_group_description=f"Base model {config.base_model_id}",
            tags=_tags({**base_group_tags(config.base_model_id), **approval}),
        )
        self.fine_tuned_groups: dict[str, sagemaker.CfnModelPackageGroup] = {}
        for line in config.fine_tuned_lines:
            name = line.group_name(config.base_model_id)
            group = sagemaker.CfnModelPackageGroup(
                self,
                f"Group-{name}",
                model_package_group_name=name,
                model_package_group_description=(
                    f"{line.mode.value} fine-tunes of {config.base_model_id} on {line.dataset}"
                ),
                tags=_tags({**finetuned_group_tags(config.base_model_id, line.mode, line.dataset), **approval}),
            )
            self.fine_tuned_groups[name] = group
        cdk.CfnOutput(self, "BaseModelGroupName", value=config.base_group)
