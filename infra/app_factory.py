"""Builds the CDK app: configuration, the stacks of each selected environment, their order, the nag gate."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk

from infra.config import CONTEXT_KEY, ENV_SELECTOR_KEY, load_environments
from infra.environment import EnvironmentProps, EnvironmentStacks
from infra.environment_config import EnvironmentConfig
from infra.nag import apply_gate
from infra.props import PromotionProps
from infra.registration.props import RegistrationProps
from infra.serving.props import ServingProps
from infra.stacks.network import NetworkProps
from infra.stacks.registry import RegistryProps
from infra.stacks.storage import StorageProps
from infra.stacks.studio import StudioProps
from infra.stacks.training import TrainingProps
from infra.stacks.workflow import WorkflowProps


def build_app(
    context: dict[str, Any] | None = None, outdir: str | None = None
) -> tuple[cdk.App, list[EnvironmentStacks]]:
    """Create the app; ``context`` (tests) defaults to what ``cdk.json`` and ``-c`` provide."""
    app = cdk.App(context=context, outdir=outdir)
    raw = {CONTEXT_KEY: app.node.try_get_context(CONTEXT_KEY)}
    selected = app.node.try_get_context(ENV_SELECTOR_KEY)
    environments = [
        EnvironmentStacks(app, config, environment_props(config)) for config in load_environments(raw, selected)
    ]
    for environment in environments:
        add_dependencies(environment)
    apply_gate(app)
    return app, environments


def add_dependencies(env: EnvironmentStacks) -> None:
    """Dependencies (``add_stack_dependency``; ``add_dependency`` is deprecated in aws-cdk-lib 2.275) that no
    cross-stack reference makes: resources named literally in another stack.

    - studio owns the SageMaker execution role that registration (PassRole by the deploy function), workflow (every
      training job) and serving (the model, the endpoint config) name by ARN; CloudFormation validates the role
      when it creates a model, so serving on a clean account needs studio first;
    - registration's functions register into the registry's package groups and collections;
    - workflow runs the trainer image the training stack builds.
    """
    env.registration.add_stack_dependency(env.studio, "passes the execution role it names")
    env.registration.add_stack_dependency(env.registry, "registers into its package groups and collections")
    env.workflow.add_stack_dependency(env.studio, "training jobs run as the execution role it names")
    env.workflow.add_stack_dependency(env.training, "training jobs run the trainer image it builds")
    if env.serving is not None:
        env.serving.add_stack_dependency(env.studio, "the model and endpoint config run as the execution role it names")


def environment_props(config: EnvironmentConfig) -> EnvironmentProps:
    """Each stack's props from the environment's configuration: the one place that reads ``EnvironmentConfig``
    for the stacks."""
    basics = _basics(config)
    alerting = dict(basics, alarm_topic_arn=config.alarm_topic_arn, alarm_email=config.alarm_email)
    lines = tuple(config.fine_tuned_lines)
    promotion = PromotionProps(
        region=config.region,
        artifact_bucket_name=config.artifact_bucket_name,
        groups=tuple(config.package_groups),
        source=config.promotion_source,
        targets=tuple(config.promotion_targets),
    )
    return EnvironmentProps(
        network=NetworkProps(
            **basics,
            availability_zones=tuple(config.availability_zones),
            vpc_cidr=config.vpc_cidr,
            endpoint_policies=config.endpoint_policies,
            artifact_bucket_name=config.artifact_bucket_name,
        ),
        storage=StorageProps(
            **basics,
            account=config.account,
            artifact_bucket_name=config.artifact_bucket_name,
            noncurrent_version_days=config.noncurrent_version_days,
            vpc_endpoint_only_bucket_access=config.vpc_endpoint_only_bucket_access,
            execution_role_name=config.execution_role_name,
            import_base_role_name=config.import_base_role_name,
            promote_role_name=config.promote_role_name,
            dataset_upload_role_name=config.dataset_upload_role_name,
            promotion=promotion,
        ),
        studio=StudioProps(
            **basics,
            artifact_bucket_name=config.artifact_bucket_name,
            execution_role_name=config.execution_role_name,
            auto_approve=config.auto_approve,
            allowed_instance_types=tuple(config.allowed_instance_types),
            studio_instance_types=tuple(config.studio_instance_types),
            user_profiles=tuple(config.user_profiles),
        ),
        registry=RegistryProps(
            **basics,
            base_model_id=config.base_model_id,
            base_group=config.base_group,
            fine_tuned_lines=lines,
            approval=config.approval,
            approvers=tuple(config.approvers),
            artifact_bucket_name=config.artifact_bucket_name,
            promotion=promotion,
        ),
        registration=RegistrationProps(
            **alerting,
            artifact_bucket_name=config.artifact_bucket_name,
            approval=config.approval,
            auto_approve=config.auto_approve,
            base_model_id=config.base_model_id,
            fine_tuned_lines=lines,
            base_import_sources=tuple(config.base_import_sources),
            hub_token_secret_arn=config.hub_token_secret_arn,
            import_base_role_name=config.import_base_role_name,
            promote_role_name=config.promote_role_name,
            execution_role_name=config.execution_role_name,
            allowed_instance_types=tuple(config.allowed_instance_types),
            serving=config.serving,
            serving_instance_type=config.serving_instance_type,
            promotion=promotion,
        ),
        training=TrainingProps(**basics),
        workflow=WorkflowProps(
            **alerting,
            execution_role_name=config.execution_role_name,
            allowed_instance_types=tuple(config.allowed_instance_types),
            base_group=config.base_group,
        ),
        serving=serving_props(config) if config.serving else None,
    )


def serving_props(config: EnvironmentConfig) -> ServingProps:
    """The serving stack's props (``config.serving`` must be set)."""
    assert config.serving is not None
    return ServingProps(
        **_basics(config),
        serving=config.serving,
        serving_instance_type=config.serving_instance_type,
        fine_tuned_lines=tuple(config.fine_tuned_lines),
        execution_role_name=config.execution_role_name,
        artifact_bucket_name=config.artifact_bucket_name,
    )


def _basics(config: EnvironmentConfig) -> dict[str, Any]:
    """The fields of ``infra.props.EnvironmentBasics``."""
    return dict(
        name=config.name,
        prefix=config.prefix,
        region=config.region,
        removal_policy=config.removal_policy,
        log_retention_days=config.log_retention_days,
    )
