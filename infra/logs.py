"""A CloudWatch log group encrypted with a key of its own stack (CloudWatch Logs may use the key only for this
account's log groups)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.parts.keys import environment_key
from infra.props import EnvironmentBasics, removal_policy


def encrypted_log_group(
    scope: Construct, construct_id: str, env: EnvironmentBasics, purpose: str, log_group_name: str | None = None
) -> logs.LogGroup:
    stack = cdk.Stack.of(scope)
    key = environment_key(scope, f"{construct_id}Key", env, purpose, purpose.replace("-", " "))
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudWatchLogsUseOnlyForThisAccountsLogGroups",
            principals=[iam.ServicePrincipal(f"logs.{env.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                }
            },
        )
    )
    group = logs.LogGroup(
        scope, construct_id, log_group_name=log_group_name, encryption_key=key, removal_policy=removal_policy(env)
    )
    # RetentionDays is a name-valued enum; the validated day count goes straight to the L1.
    group.node.default_child.retention_in_days = env.log_retention_days
    return group
