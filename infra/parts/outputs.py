"""A value published twice: under an SSM parameter (what the CLI and Studio users read) and as a stack output."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ssm as ssm
from constructs import Construct


def published_output(
    scope: Construct, parameter_id: str, output_id: str, *, parameter_name: str, value: str, description: str
) -> ssm.StringParameter:
    """The SSM parameter ``parameter_name`` holding ``value`` and the output ``output_id`` of the same value."""
    parameter = ssm.StringParameter(
        scope, parameter_id, parameter_name=parameter_name, string_value=value, description=description
    )
    cdk.CfnOutput(scope, output_id, value=value)
    return parameter
