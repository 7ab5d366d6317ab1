"""The cdk-nag gate and granular, reasoned acknowledgments.

cdk-nag 3.x is a CDK validation plugin: findings left unacknowledged make ``app.synth()`` raise
``ValidationFailed``. Each acknowledgment names one rule (and, for granular rules, one finding) on one
construct, with the reason that finding is acceptable there.
"""

from __future__ import annotations

import aws_cdk as cdk
import cdk_nag
from aws_cdk import aws_iam as iam
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


def wildcard_findings(statements: list[iam.PolicyStatement], reasons: dict[str, str]) -> list[tuple[str, str]]:
    """The granular cdk-nag IAM5 finding ids of ``statements``, each with its statement's reason from ``reasons``
    (a module's ``WILDCARD_REASONS``: statement id -> why its wildcard is needed).

    Raises ``KeyError`` for a wildcard statement without a reason in ``reasons``, and
    ``ValueError`` for an unresolved token (it cannot be acknowledged as a literal).
    """
    findings: list[tuple[str, str]] = []
    for statement in statements:
        if statement.effect == iam.Effect.DENY:
            continue  # a wildcard in a Deny narrows what the role may do; cdk-nag's IAM5 looks at Allows only
        doc = statement.to_statement_json()
        actions = doc.get("Action", [])
        resources = doc.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        wild = [f"Action::{a}" for a in actions if "*" in a] + [f"Resource::{r}" for r in resources if "*" in str(r)]
        if not wild:
            continue
        if statement.sid not in reasons:
            raise KeyError(f"statement {statement.sid!r} uses a wildcard but has no reason in WILDCARD_REASONS")
        for finding in wild:
            if "${Token[" in finding or not isinstance(finding, str):
                raise ValueError(f"statement {statement.sid!r}: cannot acknowledge unresolved token {finding!r}")
            findings.append((finding, reasons[statement.sid]))
    return findings


def acknowledge_wildcards(policy: IConstruct, statements: list[iam.PolicyStatement], reasons: dict[str, str]) -> None:
    """Acknowledge each IAM5 finding of ``policy``'s ``statements`` on its own, with its statement's reason."""
    for finding, reason in wildcard_findings(statements, reasons):
        acknowledge(policy, "AwsSolutions-IAM5", reason, finding)
