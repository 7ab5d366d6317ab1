"""The cdk-nag gate and granular, reasoned acknowledgments.

cdk-nag 3.x is a CDK validation plugin: findings left unacknowledged make ``app.synth()`` raise
``ValidationFailed``. Each acknowledgment names one rule (and, for granular rules, one finding) on one
construct, with the reason that finding is acceptable there.
"""

from __future__ import annotations

import aws_cdk as cdk
import cdk_nag
from constructs import IConstruct


def apply_gate(app: cdk.App) -> None:
    """Run the AwsSolutions rule pack over every stack of ``app`` at synth."""
    cdk.Validations.of(app).add_plugins(cdk_nag.AwsSolutionsChecks(app))


def acknowledge_cdk_provider(provider: IConstruct, purpose: str) -> None:
    """CDK's own singleton custom-resource providers (a Lambda handler and its role): their managed policy,
    runtime and template shape are CDK's, not ours."""
    acknowledge(
        provider,
        "AwsSolutions-IAM4",
        f"CDK's {purpose} provider uses the Lambda basic execution managed policy for its own logs.",
    )
    acknowledge(provider, "AwsSolutions-L1", f"CDK pins the runtime of its {purpose} provider.")
    handler = provider.node.try_find_child("Handler")
    if isinstance(handler, cdk.CfnResource):
        ignore_redundant_role_dependency(handler)
        skip_checkov(
            handler,
            {
                "CKV_AWS_115": f"CDK's {purpose} handler runs once per stack operation; no concurrency to limit.",
                "CKV_AWS_116": f"CloudFormation retries CDK's {purpose} handler; a DLQ would hold nothing.",
                "CKV_AWS_117": f"CDK's {purpose} handler calls AWS APIs only and holds no data: outside the VPC.",
            },
        )


def ignore_redundant_role_dependency(function: cdk.CfnResource) -> None:
    """CDK writes both a GetAtt of a function's (or state machine's) role and a DependsOn on it; cfn-lint warns
    (W3005) about the redundancy, which is harmless."""
    function.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})


def skip_checkov(resource: cdk.CfnResource, reasons: dict[str, str]) -> None:
    """checkov skips on this one resource, each with its reason (checkov reads them from the template)."""
    resource.add_metadata("checkov", {"skip": [{"id": check, "comment": why} for check, why in reasons.items()]})


def acknowledge(scope: IConstruct, rule_id: str, reason: str, *findings: str) -> None:
    """Acknowledge ``rule_id`` on ``scope``; with ``findings``, only those granular findings."""
    ids = [f"{rule_id}[{finding}]" for finding in findings] or [rule_id]
    cdk.Validations.of(scope).acknowledge(*(cdk.Acknowledgment(id=i, reason=reason) for i in ids))
