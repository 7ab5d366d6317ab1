"""The fine-tune workflow's definition, executed by the local emulator's Step Functions against its SageMaker
(moto runs the request/response ``createTrainingJob`` task and marks the job Completed at once)."""

from __future__ import annotations

import json
import time
import urllib.request

import boto3
import pytest

from infra.workflow import WorkflowSettings, definition
from loraops import s3_layout
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.finetune import FineTuneError, FineTuneRequest
from loraops.naming import TAG_PACKAGE_GROUP, OutputMode
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, MODEL_ID, REGION

ROLE = "arn:aws:iam::123456789012:role/loraops-test-sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/loraops-trainer:test"
KEY = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
SETTINGS = WorkflowSettings("test", IMAGE, ROLE, KEY, ["subnet-1", "subnet-2"], ["sg-1"])
TRAINING = f"s3://{BUCKET}/datasets/databricks-dolly-15k/{'a' * 64}/"


@pytest.fixture
def workflow(aws, emulator, monkeypatch):
    """A state machine of the definition in the emulator, which really executes it."""
    monkeypatch.setenv("MOTO_PORT", emulator.rsplit(":", 1)[1])  # where moto's executor sends aws-sdk tasks
    body = json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{emulator}/moto-api/config", data=body, method="POST")).read()
    client = boto3.client("stepfunctions", endpoint_url=emulator, region_name=REGION)
    arn = client.create_state_machine(
        name="loraops-test-finetune", definition=json.dumps(definition(SETTINGS)), roleArn=ROLE
    )["stateMachineArn"]
    yield client, arn
    urllib.request.urlopen(
        urllib.request.Request(
            f"{emulator}/moto-api/config",
            data=json.dumps({"stepfunctions": {"execute_state_machine": False}}).encode(),
            method="POST",
        )
    ).read()


#: Generous: the emulator runs the whole execution in a thread at once; a busy 2-core machine may starve it.
EXECUTION_DEADLINE_SECONDS = 300


def _ended(client, execution_arn: str) -> dict:
    """The execution once it is no longer RUNNING (polled until then, within ``EXECUTION_DEADLINE_SECONDS``)."""
    deadline = time.monotonic() + EXECUTION_DEADLINE_SECONDS
    while (described := client.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"the execution still runs after {EXECUTION_DEADLINE_SECONDS} s"
        time.sleep(0.05)  # a poll interval, not a wait for something to happen
    return described


def _run(client, arn: str, execution_input: dict) -> dict:
    return _ended(
        client, client.start_execution(stateMachineArn=arn, input=json.dumps(execution_input))["executionArn"]
    )


def _request(**overrides) -> FineTuneRequest:
    return FineTuneRequest(
        **{
            "model_id": MODEL_ID,
            "training_uri": TRAINING,
            "output_mode": OutputMode.ADAPTER,
            "hyperparameters": {"lora_r": "16", "num_train_epochs": "1"},
            **overrides,
        }
    )


def test_workflow_trains_the_newest_approved_base_with_the_layout_and_guards(registry, aws, workflow, tiny_base):
    client, arn = workflow
    base = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    registry.decide(base.arn, approve=True)
    request = _request(
        spot=True, validation_uri=TRAINING + "validation.jsonl", instance_type="ml.g5.12xlarge", instance_count=2
    )
    execution_input = request.execution_input(BUCKET)
    result = _run(client, arn, execution_input)
    assert result["status"] == "SUCCEEDED", result

    job = aws["sagemaker"].describe_training_job(TrainingJobName=execution_input["job_name"])
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {
        "base": f"s3://{BUCKET}/{base.model_data_prefix}",
        "training": TRAINING,
        "validation": TRAINING + "validation.jsonl",
    }
    assert job["OutputDataConfig"] == {
        "S3OutputPath": f"s3://{BUCKET}/{s3_layout.training_output_root(OutputMode.ADAPTER, ADAPTER_GROUP)}",
        "CompressionType": "NONE",
        "KmsKeyId": KEY,
    }
    assert job["HyperParameters"] == {
        "lora_r": "16",
        "num_train_epochs": "1",
        "base_model_id": MODEL_ID,
        "dataset_name": "databricks-dolly-15k",
        "output_mode": "adapter",
        "base_model_package_arn": base.arn,
        "sagemaker_torch_distributed_enabled": "true",  # the toolkit's torchrun launch: every GPU of every instance
    }
    assert job["EnableManagedSpotTraining"] is True and job["EnableNetworkIsolation"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800}
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/checkpoints/{execution_input['job_name']}/"
    assert job["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    assert job["ResourceConfig"]["VolumeKmsKeyId"] == KEY and job["RoleArn"] == ROLE
    assert (job["ResourceConfig"]["InstanceType"], job["ResourceConfig"]["InstanceCount"]) == ("ml.g5.12xlarge", 2)
    tags = {t["Key"]: t["Value"] for t in aws["sagemaker"].list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]}
    assert tags[TAG_PACKAGE_GROUP] == ADAPTER_GROUP


def test_workflow_without_an_approved_base_fails_and_starts_no_job(registry, aws, workflow, tiny_base):
    client, arn = workflow
    import_base(registry, LocalFolder(tiny_base), MODEL_ID)  # registered, still pending
    result = _run(client, arn, _request().execution_input(BUCKET))
    assert result["status"] == "FAILED" and result.get("error") == "NoApprovedBase", result
    assert aws["sagemaker"].list_training_jobs()["TrainingJobSummaries"] == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hyperparameters": {"base_model_id": "x/y"}}, "set by the workflow"),
        ({"training_uri": "/local/file.jsonl"}, "not an s3://bucket/key URI"),
        ({"instance_type": "g5.2xlarge"}, "ml.<family>.<size>"),
        ({"instance_count": 0}, "outside 1-16"),
        ({"task": "Not A Slug"}, "lowercase"),
        ({"job_name": "my-job"}, "must start with 'loraops-'"),
    ],
)
def test_bad_requests_are_refused_before_anything_starts(overrides, message):
    with pytest.raises(ValueError, match=message):
        _request(**overrides)
    assert issubclass(FineTuneError, ValueError)


def test_job_names_are_unique_per_request_and_fit_sagemaker():
    first, second = _request(), _request(hyperparameters={"lora_r": "8"})
    assert first.name() != second.name() and len(first.name()) <= 63 and first.name().startswith("loraops-adapter-")


def test_finetune_start_checks_first_then_runs_the_workflow(registry, aws, workflow, tiny_base, emulator, capsys):
    from loraops.cli import main

    client, arn = workflow
    common = ["--bucket", BUCKET, "--region", REGION, "--endpoint-url", emulator, "--workflow-arn", arn]
    start = ["finetune", "start", "--model-id", MODEL_ID, "--training-uri", TRAINING, "--hp", "lora_r=8"]
    base = import_base(registry, LocalFolder(tiny_base), MODEL_ID)

    assert main([*start, *common]) == 1  # the base is not approved yet: nothing starts
    assert "has no approved base package" in capsys.readouterr().err
    assert main([*start, "--mode", "merged", "--dataset", "other-data", *common]) == 1
    assert "no model package group 'meta-llama--Llama-2-7b-hf-other-data'" in capsys.readouterr().err
    assert main([*start, "--hp", "output_mode=merged", *common]) == 1
    assert "set by the workflow" in capsys.readouterr().err
    assert client.list_executions(stateMachineArn=arn)["executions"] == []

    registry.decide(base.arn, approve=True)
    assert main([*start, "--json", *common]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["package_group"] == ADAPTER_GROUP and started["base_package"] == base.arn
    _ended(client, started["execution_arn"])
    assert main(["finetune", "status", started["execution_arn"], "--json", *common[:-2]]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status == {
        "schema_version": 1,
        "execution": "SUCCEEDED",
        "job_name": started["job_name"],
        "job": "Completed",
        "failure": None,
    }
    job = aws["sagemaker"].describe_training_job(TrainingJobName=started["job_name"])
    assert job["HyperParameters"]["lora_r"] == "8"
