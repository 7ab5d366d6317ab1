"""Policy statements several stacks write alike."""

from __future__ import annotations

from collections.abc import Iterable

import aws_cdk as cdk
from aws_cdk import aws_iam as iam

SAGEMAKER = "sagemaker.amazonaws.com"


def pass_role_statement(sid: str, role_arn: str) -> iam.PolicyStatement:
    """iam:PassRole on one role, only to SageMaker (the jobs, models and endpoint configs that run as it)."""
    return iam.PolicyStatement(
        sid=sid,
        actions=["iam:PassRole"],
        resources=[role_arn],
        conditions={"StringEquals": {"iam:PassedToService": SAGEMAKER}},
    )


def role_arn(stack: cdk.Stack, role_name: str) -> str:
    """The ARN of the role ``role_name`` of the stack's account, named literally (IAM ARNs have no region)."""
    return stack.format_arn(service="iam", region="", resource="role", resource_name=role_name)


def list_prefixes(sid: str, bucket_arn: str, prefixes: Iterable[str]) -> iam.PolicyStatement:
    """s3:ListBucket on one bucket, limited by an ``s3:prefix`` condition to the keys under ``prefixes``."""
    return iam.PolicyStatement(
        sid=sid,
        actions=["s3:ListBucket"],
        resources=[bucket_arn],
        conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
    )
