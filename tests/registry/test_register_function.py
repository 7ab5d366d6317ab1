"""The register-finetune function, in-process against the local AWS emulator (S3, SageMaker, DynamoDB over HTTP).

Lambda itself cannot run here (moto needs Docker to invoke functions), so the handler is called directly with
realistic EventBridge events; the Lambda context is a small stand-in (the one thing no emulator provides).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from loraops import s3_layout
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.naming import TAG_PACKAGE_GROUP, OutputMode
from tests.helpers import fast_args
from tests.registry.conftest import (
    ADAPTER_GROUP,
    BUCKET,
    MODEL_ID,
    REGION,
    LambdaContext,
    invoke_concurrently,
    load_handler,
)

JOB = "loraops-dolly-adapter-7"


def event(status: str = "Completed", **detail) -> dict:
    """The EventBridge event SageMaker sends when a training job changes state (shape from the AWS docs)."""
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    return {
        "version": "0",
        "id": "5d4b8c2b-0000-0000-0000-000000000000",
        "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-11-29T06:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{JOB}"],
        "detail": {
            "TrainingJobName": JOB,
            "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{JOB}",
            "TrainingJobStatus": status,
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/{prefix}"},
            "OutputDataConfig": {
                "S3OutputPath": f"s3://{BUCKET}/{s3_layout.training_output_root(OutputMode.ADAPTER, ADAPTER_GROUP)}",
                "CompressionType": "NONE",
            },
            "Tags": {TAG_PACKAGE_GROUP: ADAPTER_GROUP, "loraops:environment": "test"},
            **detail,
        },
    }


@pytest.fixture(scope="module")
def job_output(tiny_base, tmp_path_factory) -> Path:
    from loraops_trainer.cli import main

    out = tmp_path_factory.mktemp("job") / "model"
    assert main(fast_args(tiny_base, out, max_steps=2, sample_generations=0)) == 0
    return out


@pytest.fixture
def function(registry, aws, function_environment, tiny_base, job_output):
    """The handler module, loaded the way Lambda loads it, with an approved base and the job's output in S3."""
    base = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    registry.decide(base.arn, approve=True)
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    for path in job_output.rglob("*"):
        if path.is_file():
            aws["s3"].upload_file(str(path), BUCKET, prefix + str(path.relative_to(job_output)))
    return load_handler("register_finetune")


def _packages(aws) -> list[dict]:
    return aws["sagemaker"].list_model_packages(ModelPackageGroupName=ADAPTER_GROUP)["ModelPackageSummaryList"]


def test_a_completed_job_is_registered_once_when_delivered_twice(function, aws):
    first = function.handler(event(), LambdaContext())
    assert first["registered"] and first["version"] == 1
    assert function.handler(event(), LambdaContext()) == first
    assert len(_packages(aws)) == 1
    described = aws["sagemaker"].describe_model_package(ModelPackageName=first["package_arn"])
    assert described["CustomerMetadataProperties"]["trainingJob"] == JOB


def test_concurrent_deliveries_register_one_package(function, aws):
    registered = invoke_concurrently(function, lambda: copy.deepcopy(event()))
    assert len(_packages(aws)) == 1
    assert function.handler(event(), LambdaContext()) == registered[0]  # a retry after the first finished


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_a_failed_or_stopped_job_registers_nothing(function, aws, status):
    result = function.handler(event(status), LambdaContext())
    assert result == {"registered": False, "job": JOB, "reason": f"training job {status}"}
    assert _packages(aws) == []


def test_a_job_without_its_group_tag_is_refused_with_the_reason(function, aws):
    result = function.handler(event(Tags={}), LambdaContext())
    assert not result["registered"] and result["reason"] == f"training job {JOB} has no {TAG_PACKAGE_GROUP} tag"
    assert _packages(aws) == []


def test_the_rule_pattern_delivers_only_completed_loraops_jobs(aws, emulator):
    """The registration rule's pattern (loraops.events, what the stack synthesizes) in the emulator's EventBridge,
    with an SQS queue as the target in place of the function (moto cannot invoke Lambda without Docker)."""
    import json

    import boto3

    from loraops.events import TRAINING_JOB_COMPLETED

    events = boto3.client("events", endpoint_url=emulator, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=emulator, region_name=REGION)
    queue = sqs.create_queue(QueueName="registrations")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="training-job-completed", EventPattern=json.dumps(TRAINING_JOB_COMPLETED))
    events.put_targets(Rule="training-job-completed", Targets=[{"Id": "registrations", "Arn": queue_arn}])
    cases = {"completed": event(), "failed": event("Failed"), "untagged": event(Tags={"team": "ml"})}
    for name, sample in cases.items():
        detail = {**sample["detail"], "TrainingJobName": name}
        events.put_events(
            Entries=[{"Source": sample["source"], "DetailType": sample["detail-type"], "Detail": json.dumps(detail)}]
        )
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [json.loads(m["Body"])["detail"]["TrainingJobName"] for m in messages] == ["completed"]
