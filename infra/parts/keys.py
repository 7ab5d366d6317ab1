"""A customer-managed KMS key of one environment, as every stack makes them."""

from __future__ import annotations

from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.props import EnvironmentBasics, removal_policy


def environment_key(scope: Construct, construct_id: str, env: EnvironmentBasics, alias: str, purpose: str) -> kms.Key:
    """Key ``alias/<prefix>-<alias>``, described ``loraops <env>: <purpose>``, rotated yearly, removed or retained
    with the environment's data."""
    return kms.Key(
        scope,
        construct_id,
        alias=f"alias/{env.prefix}-{alias}",
        description=f"loraops {env.name}: {purpose}",
        enable_key_rotation=True,
        removal_policy=removal_policy(env),
    )
