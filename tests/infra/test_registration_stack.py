"""The registration stack: the function, its table, queue and rule, and the asset it deploys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.functions import BUILD
from tests.infra.conftest import ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def _one(template, type_):
    (resource,) = template.find_resources(type_).values()
    return resource


def test_function_runs_in_the_vpc_with_its_guards(env, templates, synthesized):
    config = synthesized[env].config
    function = _one(templates[(env, "registration")], "AWS::Lambda::Function")["Properties"]
    assert function["Runtime"] == "python3.14" and function["Handler"] == "handler.handler"
    assert len(function["VpcConfig"]["SubnetIds"]) == len(config.availability_zones)
    assert function["ReservedConcurrentExecutions"] == 5
    assert function["KmsKeyArn"] and function["DeadLetterConfig"]["TargetArn"]
    assert function["Environment"]["Variables"]["ARTIFACT_BUCKET"] == config.artifact_bucket_name
    assert function["Environment"]["Variables"]["APPROVAL"] == config.approval


def test_idempotency_table_and_dead_letters_are_encrypted(env, templates):
    t = templates[(env, "registration")]
    table = _one(t, "AWS::DynamoDB::Table")["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True and table["SSESpecification"]["KMSMasterKeyId"]
    assert _one(t, "AWS::SQS::Queue")["Properties"]["KmsMasterKeyId"]


def test_rule_sends_completed_loraops_jobs_to_the_function_with_retries(env, templates):
    rule = _one(templates[(env, "registration")], "AWS::Events::Rule")["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Training Job State Change"],
        "detail": {"TrainingJobStatus": ["Completed"], "Tags": {"loraops:modelPackageGroup": [{"exists": True}]}},
    }
    (target,) = rule["Targets"]
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 21600, "MaximumRetryAttempts": 8}
    assert target["DeadLetterConfig"]["Arn"]


def test_function_policy_is_narrow(env, templates, synthesized):
    policies = templates[(env, "registration")].find_resources("AWS::IAM::Policy")
    (policy,) = [p for logical_id, p in policies.items() if logical_id.startswith("FunctionPolicy")]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    read = statements["ReadJobOutputs"]["Resource"]
    assert sorted(read) == sorted(
        f"arn:aws:s3:::{synthesized[env].config.artifact_bucket_name}/{p}/*" for p in ("adapters", "merged")
    )
    stars = [sid for sid, s in statements.items() if s["Effect"] == "Allow" and s["Resource"] == "*"]
    assert stars == ["DescribeNetwork"]
    assert ("DenySelfApproval" in statements) is (synthesized[env].config.approval == "manual")


def test_the_staged_asset_imports_on_its_own(env, synthesized):
    """What Lambda runs: the handler with the vendored loraops and Powertools, nothing from this checkout."""
    asset = BUILD / "register_finetune"
    for name in (
        "handler.py",
        "loraops/registry.py",
        "loraops/dlc_images.json",
        "aws_lambda_powertools",
        "typing_extensions.py",
    ):
        assert (asset / name).exists(), name
    code = (
        "import handler, loraops, aws_lambda_powertools; print(loraops.__file__); print(aws_lambda_powertools.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, '.'); {code}"],
        cwd=asset,
        capture_output=True,
        text=True,
        env={**os.environ, "IDEMPOTENCY_TABLE": "t", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(
        line.startswith(str(asset)) or line.startswith("./") or line.startswith(".") for line in result.stdout.split()
    ), result.stdout


def test_rule_pattern_is_valid_json(env, templates):
    json.dumps(_one(templates[(env, "registration")], "AWS::Events::Rule")["Properties"]["EventPattern"])
