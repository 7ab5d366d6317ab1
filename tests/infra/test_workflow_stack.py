"""The workflow stack: the state machine runs the definition the emulator executes (tests/registry/test_workflow.py)
with the environment's image, role, key and network, and its role can do no more than that."""

from __future__ import annotations

import json

import pytest

from infra.stacks.workflow import workflow_parameter
from infra.workflow import METRIC_DEFINITIONS
from tests.infra.conftest import ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def _state_machine(template) -> dict:
    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()
    return machine["Properties"]


def _definition(template) -> dict:
    """The definition with CloudFormation tokens replaced by a marker (their values are checked separately)."""
    parts = _state_machine(template)["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "TOKEN" for p in parts))


def test_state_machine_logs_traces_and_has_its_name(env, templates, synthesized):
    config = synthesized[env].config
    machine = _state_machine(templates[(env, "workflow")])
    assert machine["StateMachineName"] == f"{config.prefix}-finetune"
    assert machine["LoggingConfiguration"]["Level"] == "ALL"
    assert machine["TracingConfiguration"] == {"Enabled": True}
    (parameter,) = templates[(env, "workflow")].find_resources("AWS::SSM::Parameter").values()
    assert parameter["Properties"]["Name"] == workflow_parameter(config.prefix)


def test_the_training_job_is_uncompressed_isolated_encrypted_and_in_the_vpc(env, templates, synthesized):
    config = synthesized[env].config
    definition = _definition(templates[(env, "workflow")])
    assert definition["StartAt"] == "FindApprovedBase"
    for state in ("Train", "TrainWithValidation"):
        job = definition["States"][state]["Parameters"]
        assert definition["States"][state]["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob"
        assert job["OutputDataConfig"]["CompressionType"] == "NONE"
        assert job["EnableNetworkIsolation"] is True and job["EnableInterContainerTrafficEncryption"] is True
        assert len(job["VpcConfig"]["Subnets"]) == len(config.availability_zones)
        assert job["RoleArn"].endswith(f":role/{config.execution_role_name}")
        assert {t["Key"] for t in job["Tags"]} == {"loraops:modelPackageGroup", "loraops:environment"}
        assert job["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS  # tuning objectives
    # the toolkit's torchrun launch on every GPU of every instance (merged into the job's hyperparameters)
    added = definition["States"]["DescribeBase"]["ResultSelector"]["hyperparameters"]
    assert added["sagemaker_torch_distributed_enabled"] == "true"
    channels = [c["ChannelName"] for c in definition["States"]["TrainWithValidation"]["Parameters"]["InputDataConfig"]]
    assert channels == ["base", "training", "validation"]


def test_workflow_role_starts_only_guarded_loraops_jobs(env, templates, synthesized):
    config = synthesized[env].config
    policies = templates[(env, "workflow")].find_resources("AWS::IAM::Policy")
    (policy,) = [p for logical_id, p in policies.items() if logical_id.startswith("WorkflowPolicy")]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    start = statements["StartTrainingJobs"]
    assert start["Resource"] == f"arn:aws:sagemaker:{config.region}:{config.account}:training-job/loraops-*"
    assert start["Condition"]["Bool"] == {
        "sagemaker:NetworkIsolation": "true",
        "sagemaker:InterContainerTrafficEncryption": "true",
    }
    assert set(start["Condition"]["ArnEquals"]) == {"sagemaker:VolumeKmsKey", "sagemaker:OutputKmsKey"}
    assert len(start["Condition"]["ForAllValues:StringEquals"]["sagemaker:VpcSubnets"]) == len(
        config.availability_zones
    )
    assert statements["PassExecutionRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    assert statements["FindApprovedBase"]["Resource"].endswith(f":model-package/{config.base_group}/*")
    stars = sorted(sid for sid, s in statements.items() if s["Resource"] == "*")
    assert stars == ["ListModelPackages"]


def test_every_task_retries_throttling_with_backoff(env, templates):
    """A throttled SageMaker call (the account shares its API rate with Studio users) does not fail the fine-tune;
    job creation also waits for a training-job quota held by other jobs."""
    states = _definition(templates[(env, "workflow")])["States"]
    tasks = {name: state for name, state in states.items() if state["Type"] == "Task"}
    assert sorted(tasks) == ["DescribeBase", "DescribeTrainingJob", "FindApprovedBase", "Train", "TrainWithValidation"]
    for name, state in tasks.items():
        throttling = state["Retry"][0]
        assert {"SageMaker.ThrottlingException", "SageMaker.AmazonSageMakerException"} <= set(
            throttling["ErrorEquals"]
        ), name
        assert throttling["BackoffRate"] > 1 and throttling["MaxAttempts"] >= 5 and throttling["MaxDelaySeconds"], name
        assert throttling["JitterStrategy"] == "FULL", name
        quota = [r for r in state["Retry"] if "SageMaker.ResourceLimitExceededException" in r["ErrorEquals"]]
        assert bool(quota) is (state["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob"), name
