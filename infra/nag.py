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


def acknowledge(scope: IConstruct, rule_id: str, reason: str, *findings: str) -> None:
    """Acknowledge ``rule_id`` on ``scope``; with ``findings``, only those granular findings."""
    ids = [f"{rule_id}[{finding}]" for finding in findings] or [rule_id]
    cdk.Validations.of(scope).acknowledge(*(cdk.Acknowledgment(id=i, reason=reason) for i in ids))
