"""The promote function and ``loraops models promote`` (issue #21) against the local AWS emulator's two environments
(conftest.py's promotion world): the function promotes or refuses with the reason; the CLI invokes it, prints the
lineage or refuses in one line, and rejects malformed arguments before invoking. The function is called in-process
(moto cannot run Lambda without Docker)."""

from __future__ import annotations

import json

import boto3
import pytest

from loraops.packages import PENDING
from tests.registry.conftest import (
    PROD_BUCKET,
    PROD_REGION,
    STAGING,
    STAGING_BUCKET,
    LambdaContext,
    _prod_objects,
    _prod_packages,
    load_handler,
)


@pytest.fixture
def world(promotion_world):
    """conftest.py's promotion_world, under the name these tests use."""
    return promotion_world


def _promote_function_environment(world, monkeypatch) -> None:
    """The environment prod's stack gives the promote function, pointed at the emulator."""
    for key, value in dict(
        AWS_ENDPOINT_URL=world["emulator"],
        AWS_REGION=PROD_REGION,
        ARTIFACT_BUCKET=PROD_BUCKET,
        APPROVAL="manual",
        SOURCE_ENVIRONMENT="staging",
        SOURCE_ACCOUNT=STAGING.account,
        SOURCE_REGION=STAGING.region,
        SOURCE_BUCKET=STAGING_BUCKET,
    ).items():
        monkeypatch.setenv(key, value)


def test_the_function_promotes_and_refuses_with_the_reason(world, monkeypatch):
    _promote_function_environment(world, monkeypatch)
    function = load_handler("promote")
    result = function.handler({"package_arn": world["base"].arn}, LambdaContext())
    assert result["promoted"] and result["status"] == PENDING and result["source_package_arn"] == world["base"].arn
    assert result["source_environment"] == "staging"
    assert result["content_digest"] == world["base"].metadata["contentDigest"]
    refused = function.handler({"package_arn": world["adapter"].arn}, LambdaContext())
    assert refused == {"promoted": False, "reason": refused["reason"]} and "approve it first" in refused["reason"]
    assert function.handler({}, LambdaContext())["promoted"] is False


class _PromoteFunction:
    """Stands in for Lambda (moto needs Docker to run a function): ``invoke`` checks its parameters against botocore's
    model of the Lambda API, then runs the promote handler in this process with the environment the stack gives it."""

    def __init__(self, handler, invoked: list) -> None:
        self.handler, self.invoked = handler, invoked
        self.model = boto3.client("lambda", region_name=PROD_REGION).meta.service_model

    def invoke(self, **params):
        import io

        from botocore.exceptions import ParamValidationError
        from botocore.validate import ParamValidator

        report = ParamValidator().validate(params, self.model.operation_model("Invoke").input_shape)
        if report.has_errors():
            raise ParamValidationError(report=report.generate_report())
        self.invoked.append(params)
        result = self.handler.handler(json.loads(params["Payload"]), LambdaContext())
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}


@pytest.fixture
def cli(world, monkeypatch, capsys):
    """``loraops models promote`` against the emulator, its function run in-process."""
    from loraops.cli import main
    from loraops.cli import promote as promote_cli

    _promote_function_environment(world, monkeypatch)
    invoked: list = []
    function = _PromoteFunction(load_handler("promote"), invoked)
    monkeypatch.setattr(promote_cli, "lambda_client", lambda args: function)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["models", "promote", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    run.invoked = invoked
    return run


def test_the_cli_promotes_through_the_function_and_prints_the_lineage(cli, world):
    code, out, err = cli(world["base"].arn, "--to", "prod", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["schema_version"] == 1 and result["status"] == PENDING
    assert result["source_package_arn"] == world["base"].arn and result["source_environment"] == "staging"
    assert [p["FunctionName"] for p in cli.invoked] == ["loraops-prod-promote"]
    assert cli.invoked[0]["InvocationType"] == "RequestResponse"
    code, out, _ = cli(world["base"].arn, "--to", "prod")
    assert code == 0 and f"promoted from staging {world['base'].arn}" in out and len(_prod_packages(world)) == 1


def test_the_cli_refuses_in_one_line_and_changes_nothing(cli, world):
    code, out, err = cli(world["adapter"].arn, "--to", "prod")  # its base is not in prod
    assert (code, out) == (1, "")
    # the CLI's own line (the in-process function's log lines share stderr here; in AWS they go to CloudWatch)
    (line,) = [line for line in err.splitlines() if line.startswith("loraops:")]
    assert err.endswith(line + "\n") and line.startswith("loraops: error: not promoted: ")
    assert "promote its base and approve it first" in line
    assert _prod_objects(world) == {} and _prod_packages(world) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["arn:aws:sagemaker:us-east-1:123456789012:model-package-group/g", "--to", "prod"], "not a versioned"),
        (["arn:aws:sagemaker:us-east-1:123456789012:model-package/g/1", "--to", "Prod!"], "not an environment name"),
    ],
)
def test_the_cli_rejects_malformed_arguments_with_a_usage_error_before_invoking(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and message in err and cli.invoked == []
