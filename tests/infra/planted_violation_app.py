"""A CDK app for the gate test: the real loraops app plus one deliberately insecure bucket.

Run as ``cdk synth --app "python -m tests.infra.planted_violation_app"`` from the repository root by
tests/infra/test_nag_gate.py; never part of the product.
"""

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3

from infra.app_factory import build_app


def plant(app: cdk.App) -> cdk.Stack:
    """A stack whose bucket has no SSL enforcement, no access logs and no encryption settings."""
    stack = cdk.Stack(app, "loraops-planted-violation", env=cdk.Environment(account="111111111111", region="us-east-1"))
    s3.Bucket(stack, "InsecureBucket", block_public_access=s3.BlockPublicAccess.BLOCK_ALL)
    return stack


if __name__ == "__main__":
    app, _ = build_app()
    plant(app)
    app.synth()
