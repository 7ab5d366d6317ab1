"""The deploy rehearsal: dev's stacks created in moto's CloudFormation (a server on loopback started here), from the
session's synthesized assembly; failures are clear and stop the rehearsal. Each adaptation is shown to be needed in
test_rehearsal_adaptations.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.rehearsal import AssemblyError, RehearsalError, StackArtifact, deploy_order, read_stacks, rehearse
from infra.rehearsal.__main__ import SERVED_PREFIX_SEED, default_seeds
from infra.rehearsal.adapt import emulated_types
from infra.rehearsal.emulator import Emulator
from infra.rehearsal.run import create_stack
from tests.helpers import ROOT
from tests.infra.conftest import REHEARSAL_ACCOUNT as ACCOUNT
from tests.infra.conftest import REHEARSAL_REGION as REGION
from tests.infra.conftest import _artifact

PREFIX = "loraops-dev"

#: What moto 5.2.5 cannot create in dev's templates. A new type here must be looked at: implemented by moto (then
#: it leaves this list) or stood in on purpose (then it joins it).
EXPECTED_STOOD_IN = {
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::EC2::SecurityGroupEgress",
    "AWS::ResourceGroups::Group",
    "AWS::S3::BucketPolicy",
    "AWS::SNS::TopicPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::SageMaker::Domain",
    "AWS::SageMaker::InferenceComponent",
    "AWS::SageMaker::ModelPackageGroup",
    "AWS::SageMaker::UserProfile",
    "Custom::S3AutoDeleteObjects",
    "Custom::VpcRestrictDefaultSG",
}


@pytest.fixture(scope="module")
def cdk_out(synthesized) -> Path:
    return Path(synthesized["dev"].storage.node.root.outdir)


@pytest.fixture(scope="module")
def dev_stacks(cdk_out) -> list[StackArtifact]:
    stacks = read_stacks(cdk_out)
    return deploy_order(stacks, [name for name in stacks if name.startswith(f"{PREFIX}-")])


@pytest.fixture(scope="module")
def rehearsed(dev_stacks):
    """One rehearsal of dev; the emulator stays up for the module's checks and stops after it."""
    with Emulator(ACCOUNT) as aws:
        yield aws, rehearse(aws, dev_stacks, default_seeds(PREFIX))


def _outputs(aws: Emulator, stack: str) -> dict[str, str]:
    described = aws.client("cloudformation", REGION).describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def _exports(aws: Emulator) -> dict[str, str]:
    return {e["Name"]: e["Value"] for e in aws.client("cloudformation", REGION).list_exports()["Exports"]}


# --- dev, whole ---


def test_every_dev_stack_is_created_in_dependency_order(rehearsed, dev_stacks):
    aws, report = rehearsed
    names = [stack.name for stack in dev_stacks]
    assert [stack.name for stack in report.stacks] == names
    assert {"loraops-dev-network", "loraops-dev-storage", "loraops-dev-serving"} <= set(names)
    for position, stack in enumerate(dev_stacks):
        assert set(stack.dependencies) <= set(names[:position]), stack.name
    listed = aws.client("cloudformation", REGION).describe_stacks()["Stacks"]
    assert {s["StackName"]: s["StackStatus"] for s in listed} == dict.fromkeys(names, "CREATE_COMPLETE")
    assert all(stack.status == "CREATE_COMPLETE" for stack in report.stacks)


def test_the_stood_in_types_are_the_expected_ones(rehearsed):
    aws, report = rehearsed
    assert set(report.not_created_types) == EXPECTED_STOOD_IN
    # Every stand-in is in the emulator, recording what it stands in for (nothing was dropped silently).
    ssm = aws.client("ssm", REGION)
    records = [
        json.loads(p["Value"])
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path="/rehearsal/standin", Recursive=True)
        for p in page["Parameters"]
    ]
    assert sum(sum(s.stood_in.values()) for s in report.stacks) == len(records)
    assert {r["standsInFor"] for r in records} == EXPECTED_STOOD_IN


def test_cross_stack_values_arrive_as_real_resources(rehearsed):
    aws, report = rehearsed
    exports = _exports(aws)
    subnets = sorted(v for k, v in exports.items() if k.startswith("loraops-dev-network:") and "Subnet" in k)
    assert len(subnets) == 2
    ec2 = aws.client("ec2", REGION)
    assert sorted(s["SubnetId"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]) == subnets
    key_arn = next(v for k, v in exports.items() if k.startswith("loraops-dev-storage:") and k.endswith("Arn9D58E80E"))
    assert aws.client("kms", REGION).describe_key(KeyId=key_arn)["KeyMetadata"]["Arn"] == key_arn
    bucket = _outputs(aws, "loraops-dev-storage")["ArtifactBucketName"]
    aws.client("s3", REGION).head_bucket(Bucket=bucket)
    # The serving stack's model got the network's subnets (Fn::ImportValue) and the seeded SSM prefix.
    sagemaker = aws.client("sagemaker", REGION)
    (model,) = sagemaker.list_models()["Models"]
    described = sagemaker.describe_model(ModelName=model["ModelName"])
    assert sorted(described["VpcConfig"]["Subnets"]) == subnets
    source = described["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    assert source == f"s3://{bucket}/{SERVED_PREFIX_SEED}"
    (config,) = sagemaker.list_endpoint_configs()["EndpointConfigs"]
    capture = sagemaker.describe_endpoint_config(EndpointConfigName=config["EndpointConfigName"])["DataCaptureConfig"]
    assert capture["KmsKeyId"] == key_arn


def test_assets_and_bootstrap_are_in_the_emulator(rehearsed):
    aws, report = rehearsed
    s3 = aws.client("s3", REGION)
    assert report.published_assets
    for url in report.published_assets:
        bucket, key = url.removeprefix("s3://").split("/", 1)
        assert bucket == f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}"
        s3.head_object(Bucket=bucket, Key=key)
    assert aws.client("ssm", REGION).get_parameter(Name="/cdk-bootstrap/hnb659fds/version")["Parameter"]["Value"]
    functions = aws.client("lambda", REGION).list_functions()["Functions"]
    assert functions and all(f["CodeSize"] > 0 for f in functions)
    assert report.unbuilt_images == ["TrainerImage"]


def test_report_table_and_json(rehearsed, tmp_path):
    _, report = rehearsed
    table = report.table()
    assert "loraops-dev-serving: CREATE_COMPLETE" in table
    assert "stood in  AWS::SageMaker::InferenceComponent" in table
    data = json.loads(json.dumps(report.as_dict()))
    assert set(data["not_created_types"]) == EXPECTED_STOOD_IN
    assert all(w["moto_cause"] for w in data["moto_workarounds"])
    assert {s["name"] for s in data["stacks"]} == {s.name for s in report.stacks}


# --- failures are clear and stop the rehearsal ---


def test_a_dangling_import_value_fails_naming_the_stack_and_export(aws, cdk_out, tmp_path):
    template = json.loads((cdk_out / "loraops-dev-training.template.json").read_text())
    template["Resources"]["Dangling"] = {
        "Type": "AWS::SSM::Parameter",
        "Properties": {"Name": "/dangling", "Type": "String", "Value": {"Fn::ImportValue": "loraops-dev-nowhere:X"}},
    }
    with pytest.raises(RehearsalError, match=r"loraops-dev-broken: .*No export named loraops-dev-nowhere:X"):
        rehearse(aws, [_artifact(tmp_path, "loraops-dev-broken", template)])


def test_an_ssm_parameter_nobody_seeds_is_named(aws, tmp_path):
    template = {
        "Parameters": {"Prefix": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/loraops-x/unset"}},
        "Resources": {
            "P": {
                "Type": "AWS::SSM::Parameter",
                "Properties": {"Type": "String", "Value": {"Ref": "Prefix"}, "Name": "/p"},
            }
        },
    }
    artifact = _artifact(tmp_path, "seeded", template)
    with pytest.raises(RehearsalError, match=r"seeded: .*Prefix reads /loraops-x/unset.*--ssm NAME=VALUE"):
        rehearse(aws, [artifact])
    assert aws.client("cloudformation", REGION).describe_stacks()["Stacks"] == []  # nothing was attempted
    report = rehearse(aws, [artifact], {"/loraops-x/unset": "v1"})
    assert report.stacks[0].created == {"AWS::SSM::Parameter": 1}
    assert aws.client("ssm", REGION).get_parameter(Name="/p")["Parameter"]["Value"] == "v1"


def test_a_bootstrap_too_old_for_the_template_fails_its_rule(aws, dev_stacks, tmp_path):
    """moto ignores ``Rules``; CDK's CheckBootstrapVersion (dev's own, copied) wants version 6 or later."""
    synthesized = next(stack for stack in dev_stacks if stack.name == "loraops-dev-training").template()
    template = {
        "Parameters": synthesized["Parameters"],
        "Rules": synthesized["Rules"],
        "Resources": {
            "P": {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/p", "Type": "String", "Value": "v"}}
        },
    }
    artifact = _artifact(tmp_path, "old-bootstrap", template)
    with pytest.raises(RehearsalError, match="old-bootstrap: rule CheckBootstrapVersion fails: CDK bootstrap stack"):
        rehearse(aws, [artifact], bootstrap_version="5")
    assert aws.client("cloudformation", REGION).describe_stacks()["Stacks"] == []
    assert rehearse(aws, [artifact], bootstrap_version="6").stacks[0].status == "CREATE_COMPLETE"


def test_a_resource_the_emulator_skips_is_not_reported_as_created(aws, tmp_path):
    """moto "creates" a type it does not implement by skipping it: pretending it is implemented must fail."""
    template = {"Resources": {"G": {"Type": "AWS::ResourceGroups::Group", "Properties": {"Name": "g"}}}}
    artifact = _artifact(tmp_path, "skipped", template)
    with pytest.raises(RehearsalError, match=r"skipped: .*CREATE_COMPLETE but did not create G"):
        create_stack(aws, artifact, emulated_types() | {"AWS::ResourceGroups::Group"})


def test_stack_selection_follows_the_manifest(cdk_out):
    stacks = read_stacks(cdk_out)
    assert (
        stacks["loraops-dev-serving"].dependencies
        and "loraops-dev-network" in stacks["loraops-dev-serving"].dependencies
    )
    serving_and_needs = ["loraops-dev-serving", *sorted(stacks["loraops-dev-serving"].dependencies)]
    order = [s.name for s in deploy_order(stacks, serving_and_needs)]
    assert order.index("loraops-dev-network") < order.index("loraops-dev-serving")
    assert order.index("loraops-dev-storage") < order.index("loraops-dev-serving")
    with pytest.raises(AssemblyError, match="loraops-dev-serving depends on .*loraops-dev-network"):
        deploy_order(stacks, [name for name in serving_and_needs if name != "loraops-dev-network"])
    with pytest.raises(AssemblyError, match="not in the assembly: loraops-dev-nope"):
        deploy_order(stacks, ["loraops-dev-nope"])


def test_cli_writes_the_report(cdk_out, tmp_path):
    """``python -m infra.rehearsal`` in its own process (its emulator's state is then its own)."""
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "infra.rehearsal", "--env", "dev", "--cdk-out", str(cdk_out), "--stacks"]
    done = subprocess.run(
        [*command, "loraops-dev-training", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "loraops-dev-training: CREATE_COMPLETE" in done.stdout
    data = json.loads(out.read_text())
    assert [s["status"] for s in data["stacks"]] == ["CREATE_COMPLETE"]
    assert data["seeded_parameters"] == {"/cdk-bootstrap/hnb659fds/version": "30"}
    refused = subprocess.run([*command, "loraops-dev-serving"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert refused.returncode == 1
    assert "rehearsal failed: loraops-dev-serving depends on " in refused.stderr
    assert "loraops-dev-network" in refused.stderr
