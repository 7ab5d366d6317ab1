"""The inputs the stacks share, narrow and typed: each stack's own props (beside the stack; registration's in
``infra.registration.props``) extend these with only what that stack reads, and ``infra.app_factory`` builds them all
from ``EnvironmentConfig``. ``Placement`` is what the network stack gives the workloads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from infra.config_sections import PromotionPeer


@dataclass(frozen=True, kw_only=True)
class EnvironmentBasics:
    """What the shared parts of every stack read: names (``<prefix>-<purpose>``), region, removal and retention."""

    name: str
    prefix: str
    region: str
    removal_policy: Literal["destroy", "retain"]
    log_retention_days: int


def removal_policy(env: EnvironmentBasics) -> cdk.RemovalPolicy:
    """destroy, or retain except when the resource's own creation is rolled back (CloudFormation
    ``RetainExceptOnCreate``): a failed first deploy leaves no retained bucket or key to block the next one."""
    if env.removal_policy == "destroy":
        return cdk.RemovalPolicy.DESTROY
    return cdk.RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE


@dataclass(frozen=True, kw_only=True)
class Alerting(EnvironmentBasics):
    """Where a stack's alarms go: the configured topic, or ``<prefix>-alarms`` (with an optional email)."""

    alarm_topic_arn: str | None = None
    alarm_email: str | None = None


@dataclass(frozen=True, kw_only=True)
class PromotionProps:
    """What promotion grants read (``infra.promotion``): this environment's bucket and groups, its source and
    targets."""

    region: str
    artifact_bucket_name: str
    groups: tuple[str, ...]
    source: PromotionPeer | None = None
    targets: tuple[PromotionPeer, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where workloads run: the VPC, its isolated subnets and the workload security group."""

    vpc: ec2.IVpc
    subnets: list[ec2.ISubnet]
    security_group: ec2.ISecurityGroup

    @property
    def vpc_arn(self) -> str:
        return cdk.Stack.of(self.vpc).format_arn(service="ec2", resource="vpc", resource_name=self.vpc.vpc_id)
