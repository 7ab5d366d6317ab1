"""The fine-tune workflow's Amazon States Language definition, built from plain values so the stack (with CDK
tokens) and the tests (with the emulator's values) run the same definition.

Input: :meth:`loraops.finetune.FineTuneRequest.execution_input`. Steps: resolve the newest Approved package of the
base group (fail ``NoApprovedBase`` if none) -> create the training job (channels ``base`` = the package's
uncompressed S3 prefix, ``training``, optional ``validation``; uncompressed output; VPC, KMS, network isolation,
checkpoints, optional spot; launched by the training toolkit under ``torchrun`` on every GPU of every instance;
the trainer's final metrics read by :data:`METRIC_DEFINITIONS`) -> poll it until it ends (``TrainingJobFailed``
unless Completed). Registration follows from the job's EventBridge event, not from here. Every task retries
SageMaker's throttling with backoff (:func:`retry`); job creation also waits out a full training-job quota.

The job is created with the request/response ``createTrainingJob`` integration and a describe/wait loop rather
than ``createTrainingJob.sync``: both run on AWS, and the loop also runs on the local emulator, so the tests
execute this definition instead of only reading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraops.manifest import VALIDATION_LOSS
from loraops.naming import TAG_ENVIRONMENT, TAG_PACKAGE_GROUP

POLL_SECONDS = 60
TRAINER_CHECKPOINTS = "/opt/ml/checkpoints"
#: Hyperparameters the workflow adds to every job. ``sagemaker_torch_distributed_enabled`` is what the SageMaker SDK's
#: ``distribution={"torch_distributed": {"enabled": True}}`` sets: the image's training toolkit then starts the
#: entry point with ``torchrun --nnodes <instances> --nproc_per_node <GPUs>`` (one process per GPU of every
#: instance) instead of one process per instance.
LAUNCH_HYPERPARAMETERS = {"sagemaker_torch_distributed_enabled": "true"}
#: The trainer's final metrics as SageMaker reads them from the job's log (``loraops metric <name>=<value>;``, one
#: line each from rank 0): the job's metrics, and the objectives a hyperparameter tuning job can use.
METRIC_DEFINITIONS = [
    {"Name": name, "Regex": f"loraops metric {name}=([-+.0-9eE]+);"}
    for name in ("train_loss", VALIDATION_LOSS, "perplexity")
]


#: Errors that a later attempt can get past: throttling of SageMaker's API. AWS SDK integrations
#: (``aws-sdk:sagemaker:*``)
#: name errors ``SageMaker.<Exception>``; the optimized ``sagemaker:createTrainingJob`` integration reports
#: throttling (and other API errors) as ``SageMaker.AmazonSageMakerException``.
THROTTLING_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.AmazonSageMakerException", "ThrottlingException"]
#: A training-job quota in use by other jobs frees up when they end: retried for up to about 4 hours.
QUOTA_ERRORS = ["SageMaker.ResourceLimitExceededException"]


def retry(task: str) -> list[dict[str, Any]]:
    """The ``Retry`` of every task: throttling with exponential backoff and jitter (5 s doubling to 5 min, 8 tries);
    job creation also waits out a full training-job quota (1 min doubling to 30 min, 12 tries)."""
    retriers = [
        {
            "ErrorEquals": THROTTLING_ERRORS,
            "IntervalSeconds": 5,
            "BackoffRate": 2.0,
            "MaxAttempts": 8,
            "MaxDelaySeconds": 300,
            "JitterStrategy": "FULL",
        }
    ]
    if task == "createTrainingJob":
        retriers.append(
            {
                "ErrorEquals": QUOTA_ERRORS,
                "IntervalSeconds": 60,
                "BackoffRate": 2.0,
                "MaxAttempts": 12,
                "MaxDelaySeconds": 1800,
                "JitterStrategy": "FULL",
            }
        )
    return retriers


@dataclass(frozen=True)
class WorkflowSettings:
    """What the definition needs from the environment (CDK tokens in the stack, literals in tests)."""

    environment: str
    trainer_image: str
    execution_role_arn: str
    key_arn: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    volume_gb: int = 200


def _channel(name: str, uri_path: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri.$": uri_path, "S3DataDistributionType": "FullyReplicated"}
        },
    }


def _create_job(settings: WorkflowSettings, with_validation: bool) -> dict[str, Any]:
    channels = [
        _channel("base", "$.base.container.ModelDataSource.S3DataSource.S3Uri"),
        _channel("training", "$.training_uri"),
    ]
    if with_validation:
        channels.append(_channel("validation", "$.validation_uri"))
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sagemaker:createTrainingJob",
        "Parameters": {
            "TrainingJobName.$": "$.job_name",
            "AlgorithmSpecification": {
                "TrainingImage": settings.trainer_image,
                "TrainingInputMode": "FastFile",
                "MetricDefinitions": METRIC_DEFINITIONS,
            },
            "RoleArn": settings.execution_role_arn,
            "HyperParameters.$": "States.JsonMerge($.hyperparameters, $.base.hyperparameters, false)",
            "InputDataConfig": channels,
            "OutputDataConfig": {
                "S3OutputPath.$": "$.output_path",
                "CompressionType": "NONE",
                "KmsKeyId": settings.key_arn,
            },
            "ResourceConfig": {
                "InstanceType.$": "$.instance_type",
                "InstanceCount.$": "$.instance_count",
                "VolumeSizeInGB": settings.volume_gb,
                "VolumeKmsKeyId": settings.key_arn,
            },
            "StoppingCondition.$": "$.stopping_condition",
            "EnableManagedSpotTraining.$": "$.spot",
            "CheckpointConfig": {"S3Uri.$": "$.checkpoint_uri", "LocalPath": TRAINER_CHECKPOINTS},
            "VpcConfig": {"Subnets": settings.subnet_ids, "SecurityGroupIds": settings.security_group_ids},
            "EnableNetworkIsolation": True,
            "EnableInterContainerTrafficEncryption": True,
            "Tags": [
                {"Key": TAG_PACKAGE_GROUP, "Value.$": "$.package_group"},
                {"Key": TAG_ENVIRONMENT, "Value": settings.environment},
            ],
        },
        "ResultPath": None,
        "Retry": retry("createTrainingJob"),
        "Next": "DescribeTrainingJob",
    }


def definition(settings: WorkflowSettings) -> dict[str, Any]:
    """The state machine definition (a dict; ``json.dumps`` it)."""
    return {
        "Comment": "loraops: fine-tune the newest approved base model; registration follows from the job's event",
        "StartAt": "FindApprovedBase",
        "States": {
            "FindApprovedBase": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:sagemaker:listModelPackages",
                "Parameters": {
                    "ModelPackageGroupName.$": "$.base_group",
                    "ModelApprovalStatus": "Approved",
                    "SortBy": "CreationTime",
                    "SortOrder": "Descending",
                    "MaxResults": 1,
                },
                "ResultSelector": {"arns.$": "$.ModelPackageSummaryList[*].ModelPackageArn"},
                "ResultPath": "$.found",
                "Retry": retry("listModelPackages"),
                "Next": "IsThereABase",
            },
            "IsThereABase": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.found.arns[0]", "IsPresent": True, "Next": "PickBase"}],
                "Default": "NoApprovedBase",
            },
            "NoApprovedBase": {
                "Type": "Fail",
                "Error": "NoApprovedBase",
                "Cause": "The base model's package group has no Approved package: register and approve one first.",
            },
            # States.ArrayGetItem rather than a [0] path (the emulator's JSONPath answers a list for one); only
            # strings are kept from SDK results, so the execution's history stays JSON (no timestamps)
            "PickBase": {
                "Type": "Pass",
                "Parameters": {"arn.$": "States.ArrayGetItem($.found.arns, 0)"},
                "ResultPath": "$.found",
                "Next": "DescribeBase",
            },
            "DescribeBase": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:sagemaker:describeModelPackage",
                "Parameters": {"ModelPackageName.$": "$.found.arn"},
                # the hyperparameters the workflow adds to the request's (they win over the request's)
                "ResultSelector": {
                    "container.$": "States.ArrayGetItem($.InferenceSpecification.Containers, 0)",
                    "hyperparameters": {"base_model_package_arn.$": "$.ModelPackageArn", **LAUNCH_HYPERPARAMETERS},
                },
                "ResultPath": "$.base",
                "Retry": retry("describeModelPackage"),
                "Next": "WithValidation",
            },
            "WithValidation": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.validation_uri", "IsPresent": True, "Next": "TrainWithValidation"}],
                "Default": "Train",
            },
            "Train": _create_job(settings, with_validation=False),
            "TrainWithValidation": _create_job(settings, with_validation=True),
            "DescribeTrainingJob": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:sagemaker:describeTrainingJob",
                "Parameters": {"TrainingJobName.$": "$.job_name"},
                "ResultSelector": {"status.$": "$.TrainingJobStatus"},
                "ResultPath": "$.job",
                "Retry": retry("describeTrainingJob"),
                "Next": "HasItEnded",
            },
            "HasItEnded": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.job.status", "StringEquals": "Completed", "Next": "Trained"},
                    {
                        "Or": [
                            {"Variable": "$.job.status", "StringEquals": "Failed"},
                            {"Variable": "$.job.status", "StringEquals": "Stopped"},
                        ],
                        "Next": "TrainingJobFailed",
                    },
                ],
                "Default": "WaitForTrainingJob",
            },
            "WaitForTrainingJob": {"Type": "Wait", "Seconds": POLL_SECONDS, "Next": "DescribeTrainingJob"},
            "TrainingJobFailed": {
                "Type": "Fail",
                "Error": "TrainingJobFailed",
                "Cause": "The training job failed or was stopped; its FailureReason says why.",
            },
            "Trained": {"Type": "Succeed"},
        },
    }
