"""The registration stack: its three functions, their table, queue and rule, and the assets they deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.functions import staged_asset
from tests.infra.conftest import ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def _one(template, type_):
    (resource,) = template.find_resources(type_).values()
    return resource


def _functions(template) -> dict[str, dict]:
    return {
        r["Properties"]["FunctionName"].split("-", 2)[2]: r["Properties"]
        for r in template.find_resources("AWS::Lambda::Function").values()
    }


def test_functions_run_with_their_guards(env, templates, synthesized):
    config = synthesized[env].config
    functions = _functions(templates[(env, "registration")])
    expected = ["import-base", "register-base", "register-finetune"] + (
        ["deploy-on-approval"] if config.serving else []
    )
    expected += ["promote"] if config.promotion_source else []
    assert sorted(functions) == sorted(expected)
    for name, function in functions.items():
        assert function["Runtime"] == "python3.14" and function["Handler"] == "handler.handler", name
        assert function["KmsKeyArn"], name
        variables = function["Environment"]["Variables"]
        assert variables["ARTIFACT_BUCKET"] == config.artifact_bucket_name and variables["APPROVAL"] == config.approval
        assert variables["IDEMPOTENCY_TABLE"], name
    for name in ("register-finetune", "register-base"):  # the Hub is outside the VPC; the rest stays in it
        assert len(functions[name]["VpcConfig"]["SubnetIds"]) == len(config.availability_zones)
    assert "VpcConfig" not in functions["import-base"] and functions["import-base"]["Timeout"] == 900
    assert functions["register-finetune"]["ReservedConcurrentExecutions"] == 5
    assert functions["register-finetune"]["DeadLetterConfig"]["TargetArn"]
    secret = functions["import-base"]["Environment"]["Variables"].get("HUB_TOKEN_SECRET")
    assert secret == (config.hub_token_secret_arn.split(":secret:")[1] if config.hub_token_secret_arn else None)


def test_idempotency_table_and_dead_letters_are_encrypted(env, templates):
    t = templates[(env, "registration")]
    table = _one(t, "AWS::DynamoDB::Table")["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True and table["SSESpecification"]["KMSMasterKeyId"]
    queues = t.find_resources("AWS::SQS::Queue").values()
    assert queues and all(q["Properties"]["KmsMasterKeyId"] for q in queues)


def _rules(template) -> dict[str, dict]:
    return {
        r["Properties"]["EventPattern"]["detail-type"][0]: r["Properties"]
        for r in template.find_resources("AWS::Events::Rule").values()
    }


def test_rule_sends_completed_loraops_jobs_to_the_function_with_retries(env, templates):
    rule = _rules(templates[(env, "registration")])["SageMaker Training Job State Change"]
    assert rule["EventPattern"] == {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Training Job State Change"],
        "detail": {"TrainingJobStatus": ["Completed"], "Tags": {"loraops:modelPackageGroup": [{"exists": True}]}},
    }
    (target,) = rule["Targets"]
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 21600, "MaximumRetryAttempts": 8}
    assert target["DeadLetterConfig"]["Arn"]


def _statements(env, templates, function: str) -> dict[str, dict]:
    policies = templates[(env, "registration")].find_resources("AWS::IAM::Policy")
    (policy,) = [p for logical_id, p in policies.items() if logical_id.startswith(function)]
    return {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}


def test_function_policies_are_narrow(env, templates, synthesized):
    config = synthesized[env].config
    bucket = f"arn:aws:s3:::{config.artifact_bucket_name}"
    finetune = _statements(env, templates, "RegisterFinetunePolicy")
    assert sorted(finetune["ReadJobOutputs"]["Resource"]) == sorted(f"{bucket}/{p}/*" for p in ("adapters", "merged"))
    base = _statements(env, templates, "RegisterBasePolicy")
    assert base["ReadBaseModels"]["Resource"] == f"{bucket}/base/*" and "WriteBaseModels" not in base
    imports = _statements(env, templates, "ImportBasePolicy")
    assert sorted(imports["WriteBaseModels"]["Resource"]) == [f"{bucket}/base/*", f"{bucket}/staging/base/*"]
    assert ("ReadHubToken" in imports) is bool(config.hub_token_secret_arn)
    if config.base_import_sources:
        resources = imports["ReadImportSources"]["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        assert resources == [uri.replace("s3://", "arn:aws:s3:::") + "*" for uri in config.base_import_sources]
    else:
        assert "ReadImportSources" not in imports
    for statements in (finetune, base, imports):
        stars = [sid for sid, s in statements.items() if s["Effect"] == "Allow" and s["Resource"] == "*"]
        assert stars in (["DescribeNetwork"], [])
        assert ("DenySelfApproval" in statements) is (config.approval == "manual")


@pytest.mark.parametrize("function", ["register_finetune", "register_base", "import_base", "deploy_on_approval"])
def test_the_staged_asset_imports_on_its_own(env, synthesized, function):
    """What Lambda runs: the handler with the vendored loraops and Powertools, nothing from this checkout."""
    asset, _ = staged_asset(function)
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


def test_rule_patterns_are_valid_json(env, templates):
    for rule in _rules(templates[(env, "registration")]).values():
        json.dumps(rule["EventPattern"])


def test_registering_functions_claim_registrations_and_read_the_environment_tag(env, templates, synthesized):
    bucket = f"arn:aws:s3:::{synthesized[env].config.artifact_bucket_name}"
    for function in ("RegisterFinetunePolicy", "RegisterBasePolicy", "ImportBasePolicy"):
        statements = _statements(env, templates, function)
        assert statements["RegistrationClaims"]["Resource"] == f"{bucket}/registrations/*"
        assert statements["ReadEnvironmentTag"]["Action"] == "s3:GetBucketTagging"
    imports = _statements(env, templates, "ImportBasePolicy")
    assert "s3:DeleteObject" not in imports["WriteBaseModels"]["Action"]  # base/ is write-once, never deleted
    assert imports["RemoveStagedBytes"]["Resource"] == f"{bucket}/staging/base/*"
