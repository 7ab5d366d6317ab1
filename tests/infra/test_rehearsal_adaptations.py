"""Each adaptation of the deploy rehearsal is needed: moto's CloudFormation fails (or loses data) on the template
without it, and a stand-in keeps references resolvable."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from infra.rehearsal.adapt import adapt, emulated_types
from infra.rehearsal.emulator import Emulator
from infra.rehearsal.run import create_stack
from tests.infra.conftest import REHEARSAL_ACCOUNT as ACCOUNT
from tests.infra.conftest import REHEARSAL_REGION as REGION
from tests.infra.conftest import _accounts, _artifact

RAW_FAILURES = (ClientError, BotoCoreError, ResponseParserError)  # moto answers its own exceptions with an HTML 500

KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}
    ],
}
MODEL = {
    "Type": "AWS::SageMaker::Model",
    "Properties": {"ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/r", "PrimaryContainer": {"Image": "i"}},
}


def _endpoint_config(variant: dict) -> dict:
    return {
        "Model": MODEL,
        "Config": {
            "Type": "AWS::SageMaker::EndpointConfig",
            "Properties": {"ProductionVariants": [{"VariantName": "main", "InitialInstanceCount": 1, **variant}]},
        },
    }


def _use_every_key(aws: Emulator) -> None:
    kms = aws.client("kms", REGION)
    for key in kms.list_keys()["Keys"]:
        kms.describe_key(KeyId=key["KeyId"])


WORKAROUND_CASES = {
    "kms-tags": {
        "K": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": KEY_POLICY, "Tags": [{"Key": "a", "Value": "b"}]}}
    },
    "kms-policy": {"K": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": KEY_POLICY}}},
    "ssm-tags": {
        "P": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {"Name": "/t", "Type": "String", "Value": "v", "Tags": {"a": "b"}},
        }
    },
    "endpoint-instance-type": _endpoint_config(
        {"ModelName": {"Fn::GetAtt": ["Model", "ModelName"]}, "InstanceType": "ml.g5.2xlarge"}
    ),
    "endpoint-without-model": _endpoint_config({"InstanceType": "ml.m5.large"}),
    "fifo-queue-name": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {"FifoQueue": True}}},
}


@pytest.mark.parametrize("case", sorted(WORKAROUND_CASES))
def test_each_workaround_avoids_a_moto_failure(aws, tmp_path, case):
    """The template as synthesized fails in moto (creating it, or using the key it created); adapted, it works."""
    template = {"Resources": WORKAROUND_CASES[case]}
    cloudformation = aws.client("cloudformation", REGION)
    with pytest.raises(RAW_FAILURES):
        cloudformation.create_stack(StackName=f"raw-{case}", TemplateBody=json.dumps(template))
        _use_every_key(aws)
    aws = aws.as_account(str(next(_accounts)))  # what the failed attempt left behind stays in the other account
    kms = aws.client("kms", REGION)
    before = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    report = create_stack(aws, _artifact(tmp_path, f"adapted-{case}", template), emulated_types())
    assert report.status == "CREATE_COMPLETE" and report.workarounds and not report.stood_in
    new_keys = [k["KeyId"] for k in kms.list_keys()["Keys"] if k["KeyId"] not in before]
    for key in new_keys:
        assert kms.describe_key(KeyId=key)["KeyMetadata"]["Enabled"]
    if case == "kms-tags":  # the tags survive the rewrite
        (key,) = new_keys
        assert kms.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "a", "TagValue": "b"}]
    if case == "fifo-queue-name":  # a FIFO queue, named as CloudFormation would
        (url,) = aws.client("sqs", REGION).list_queues(QueueNamePrefix=f"adapted-{case}")["QueueUrls"]
        assert url.endswith(f"adapted-{case}-Q.fifo")
    if case == "ssm-tags":
        tags = aws.client("ssm", REGION).list_tags_for_resource(ResourceType="Parameter", ResourceId="/t")["TagList"]
        assert tags == [{"Key": "a", "Value": "b"}]


def test_a_stand_in_keeps_references_resolvable(aws, tmp_path):
    """Without the stand-in moto skips the group, its Ref resolves to nothing and the reader loses its Value."""
    template = {
        "Resources": {
            "Group": {"Type": "AWS::ResourceGroups::Group", "Properties": {"Name": "g"}},
            "Reader": {
                "Type": "AWS::SSM::Parameter",
                "DependsOn": "Group",
                "Properties": {
                    "Name": "/reader",
                    "Type": "String",
                    "Value": {"Fn::Sub": "${Group}|${Group.Arn}|${AWS::Region}"},
                    "Description": {"Fn::GetAtt": ["Group", "Arn"]},
                },
            },
        },
        "Outputs": {"GroupName": {"Value": {"Ref": "Group"}}},
    }
    cloudformation = aws.client("cloudformation", REGION)
    with pytest.raises(RAW_FAILURES):
        cloudformation.create_stack(StackName="raw-standin", TemplateBody=json.dumps(template))
    aws = aws.as_account(str(next(_accounts)))
    adapted = adapt(template, emulated_types(), "s", ACCOUNT, REGION)
    assert adapted.standins == {"Group": "AWS::ResourceGroups::Group"}
    report = create_stack(aws, _artifact(tmp_path, "standin", template), emulated_types())
    assert report.stood_in == {"AWS::ResourceGroups::Group": 1} and report.created == {"AWS::SSM::Parameter": 1}
    arn = f"arn:aws:resourcegroups:{REGION}:{ACCOUNT}:group/standin-Group"
    value = aws.client("ssm", REGION).get_parameter(Name="/reader")["Parameter"]["Value"]
    assert value == f"standin-Group|{arn}|{REGION}"
    assert report.outputs == {"GroupName": "standin-Group"}
