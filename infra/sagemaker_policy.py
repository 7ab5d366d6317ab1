"""What SageMaker requests made as (or for) the execution role may ask for: the conditions every CreateTrainingJob,
CreateModel and CreateEndpointConfig must meet, and the execution role's SageMaker statements built on them.

Their wildcard reasons are the execution role's (``infra.execution_role.WILDCARD_REASONS``)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam


def training_job_conditions(
    subnet_ids: list[str], security_group_ids: list[str], key_arn: str, instance_types: list[str]
) -> dict[str, dict[str, object]]:
    """What every CreateTrainingJob must ask for: the loraops VPC's subnets and security group, network isolation,
    encrypted inter-container traffic, the artifact key on volumes and outputs, an allowed instance type.

    ``ForAllValues`` holds for an empty set, so a request without ``VpcConfig`` would satisfy it: the ``Null`` guard
    requires the keys to be present. ``Bool`` and ``ArnEquals`` fail on an absent key by themselves."""
    return {
        "Null": {
            "sagemaker:VpcSubnets": "false",
            "sagemaker:VpcSecurityGroupIds": "false",
            "sagemaker:InstanceTypes": "false",
        },
        "ForAllValues:StringEquals": {
            "sagemaker:VpcSubnets": subnet_ids,
            "sagemaker:VpcSecurityGroupIds": security_group_ids,
            "sagemaker:InstanceTypes": instance_types,
        },
        "Bool": {"sagemaker:NetworkIsolation": "true", "sagemaker:InterContainerTrafficEncryption": "true"},
        "ArnEquals": {"sagemaker:VolumeKmsKey": key_arn, "sagemaker:OutputKmsKey": key_arn},
    }


def model_conditions(subnet_ids: list[str], security_group_ids: list[str]) -> dict[str, dict[str, object]]:
    """What every CreateModel must ask for: the loraops VPC (``Null``-guarded) and network isolation."""
    return {
        "Null": {"sagemaker:VpcSubnets": "false", "sagemaker:VpcSecurityGroupIds": "false"},
        "ForAllValues:StringEquals": {
            "sagemaker:VpcSubnets": subnet_ids,
            "sagemaker:VpcSecurityGroupIds": security_group_ids,
        },
        "Bool": {"sagemaker:NetworkIsolation": "true"},
    }


def endpoint_config_conditions(instance_types: list[str], volume_key_arn: str | None) -> dict[str, dict[str, object]]:
    """What every CreateEndpointConfig must ask for: allowed instance types and, where the instance type has no
    local NVMe storage (SageMaker refuses a volume key there), the artifact key on volumes."""
    conditions: dict[str, dict[str, object]] = {
        "Null": {"sagemaker:InstanceTypes": "false"},
        "ForAllValues:StringEquals": {"sagemaker:InstanceTypes": instance_types},
    }
    if volume_key_arn:
        conditions["ArnEquals"] = {"sagemaker:VolumeKmsKey": volume_key_arn}
    return conditions


def sagemaker_statements(
    stack: cdk.Stack, training_conditions: dict[str, dict[str, object]], studio_instance_types: list[str]
) -> list[iam.PolicyStatement]:
    """SageMaker actions of a loraops user: train (only as :func:`training_job_conditions` allows), track,
    register, run Studio apps of ``studio_instance_types``, within this account/region."""

    def arn(resource: str) -> str:
        return stack.format_arn(service="sagemaker", resource=resource, resource_name="*")

    return [
        iam.PolicyStatement(
            sid="CreateGuardedTrainingJobs",
            actions=["sagemaker:CreateTrainingJob"],
            resources=[arn("training-job")],
            conditions=training_conditions,
        ),
        # An app or space that names no instance type runs on the domain's default (ForAllValues holds for none).
        iam.PolicyStatement(
            sid="CreateStudioApps",
            actions=["sagemaker:CreateApp", "sagemaker:CreateSpace"],
            resources=[arn("app"), arn("space")],
            conditions={"ForAllValues:StringEquals": {"sagemaker:InstanceTypes": studio_instance_types}},
        ),
        iam.PolicyStatement(
            sid="SageMakerDescribe",
            actions=["sagemaker:Describe*", "sagemaker:BatchDescribeModelPackage"],
            resources=[stack.format_arn(service="sagemaker", resource="*")],
        ),
        iam.PolicyStatement(
            sid="SageMakerListAndSearch",
            actions=[
                "sagemaker:List*",
                "sagemaker:Search",
                "sagemaker:GetSearchSuggestions",
                "sagemaker:DescribeLineageGroup",  # takes no resource ARN
            ],
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="SageMakerLoraopsWork",
            actions=[
                "sagemaker:StopTrainingJob",
                "sagemaker:CreateModelPackage",
                "sagemaker:UpdateModelPackage",
                # No serving changes (models, endpoint configs, endpoints, inference components): only the
                # deploy-on-approval function puts an approved package behind the environment's endpoint.
                "sagemaker:InvokeEndpoint",
                "sagemaker:CreateExperiment",
                "sagemaker:CreateTrial",
                "sagemaker:CreateTrialComponent",
                "sagemaker:UpdateTrialComponent",
                "sagemaker:AssociateTrialComponent",
                "sagemaker:BatchPutMetrics",
                "sagemaker:AddTags",
                "sagemaker:DeleteApp",
                "sagemaker:UpdateSpace",
            ],
            resources=[
                arn(r)
                for r in (
                    "training-job",
                    "model-package",
                    "model-package-group",
                    "endpoint",
                    "inference-component",
                    "experiment",
                    "experiment-trial",
                    "experiment-trial-component",
                    "app",
                    "space",
                )
            ],
        ),
    ]
