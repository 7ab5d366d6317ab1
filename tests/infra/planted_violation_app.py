"""A CDK app for the gate test: the real loraops app plus one deliberately insecure bucket.

Run by ``cdk synth --app`` in tests/infra/test_nag_gate.py; never part of the product.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aws_cdk as cdk  # noqa: E402
from aws_cdk import aws_s3 as s3  # noqa: E402

from infra.app_factory import build_app  # noqa: E402


def plant(app: cdk.App) -> cdk.Stack:
    """A stack whose bucket has no SSL enforcement, no access logs and no encryption settings."""
    stack = cdk.Stack(app, "loraops-planted-violation", env=cdk.Environment(account="111111111111", region="us-east-1"))
    s3.Bucket(stack, "InsecureBucket", block_public_access=s3.BlockPublicAccess.BLOCK_ALL)
    return stack


if __name__ == "__main__":
    app, _ = build_app()
    plant(app)
    app.synth()
