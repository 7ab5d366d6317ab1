"""Policy statements several stacks write alike."""

from __future__ import annotations

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
