"""Least-privilege policy statements of the SageMaker execution role.

Each function returns the statements for one concern, so tests and reviewers can read them apart.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3

from infra.parts.policies import pass_role_statement
from loraops import s3_layout
from loraops.collections import COLLECTION_TAG

#: Tag keys that steer policy (approval policy, environment): never changed by the execution role.
POLICY_TAG_PREFIX = "loraops:"


#: Why each statement that holds a wildcard needs it; a new wildcard statement needs a reason here.
WILDCARD_REASONS: dict[str, str] = {
    "ListLoraopsPrefixes": "ListBucket is limited by an s3:prefix condition to the loraops prefixes.",
    "ReadBaseModelsAndDatasets": "Base models and datasets are keyed by digest under base/ and datasets/; "
    "reading every version under those two prefixes is the job's purpose.",
    "ReadWriteFineTuneOutputs": "Training jobs write under adapters/, merged/ and checkpoints/ "
    "with job names chosen at run time; access is confined to those prefixes of the one bucket.",
    "DeleteScratchObjects": "Checkpoints and captured data are named per job or endpoint at "
    "run time; no registered package points under these prefixes.",
    "CollectionsCreate": "resource-groups:CreateGroup takes no resource ARN (only '*'); the request must tag the "
    "new group sagemaker:collection=true, with collection tag keys only (conditions).",
    "CollectionsTagAndDelete": "Only groups tagged sagemaker:collection=true may be tagged or deleted (condition).",
    "CollectionsRead": "Collections are created at run time with user-chosen names; read-only calls.",
    "CollectionsSearch": "tag:GetResources supports no resource-level permissions; it only accepts '*'.",
    "CollectionsTagModelPackageGroups": "Fine-tuned lines create package groups at run time; adding a group to "
    "a collection is tagging it. Limited to model package groups of this account and region.",
    "WriteSageMakerLogs": "SageMaker names log streams per job at run time under /aws/sagemaker/.",
    "PutMetrics": "PutMetricData supports no resource-level permissions; limited by a namespace condition.",
    "EcrLogin": "ecr:GetAuthorizationToken supports no resource-level permissions; it only accepts '*'.",
    "PullImages": "Pulls the AWS Deep Learning Containers (their publishing account in the region: the registry of "
    "the training image in loraops/dlc_images.json) and this account's CDK image-asset repositories (cdk-*); image "
    "names vary by framework version.",
    "VpcNetworkInterfaces": "SageMaker creates and deletes the network interfaces of VPC jobs and apps; named "
    "at run time, limited to the loraops VPC by an ec2:Vpc condition.",
    "DescribeNetwork": "EC2 Describe* calls support no resource-level permissions; they only accept '*'.",
    "SageMakerDescribe": "Read-only Describe calls on any SageMaker resource of this account and region, so "
    "Studio can browse the registry; they cannot change anything.",
    "SageMakerListAndSearch": "List, Search, GetSearchSuggestions and DescribeLineageGroup mostly support no "
    "resource-level permissions (they only accept '*'); read-only.",
    "CreateGuardedTrainingJobs": "Training jobs are named at run time; every one must run in the loraops VPC, "
    "network-isolated, with the artifact key and an allowed instance type (conditions).",
    "CreateStudioApps": "Studio apps and spaces are named per user at run time; limited to the environment's "
    "Studio instance types (condition).",
    "SageMakerLoraopsWork": "Training jobs, packages, models, endpoints, experiments and Studio apps are named at "
    "run time; every action is limited to this account and region's resources of those types.",
}


def bucket_statements(bucket: s3.IBucket) -> list[iam.PolicyStatement]:
    """Read the base models and datasets; read-write the fine-tune outputs, checkpoints and captured data."""
    read_only = [bucket.arn_for_objects(f"{p}*") for p in s3_layout.READ_ONLY_PREFIXES]
    read_write = [bucket.arn_for_objects(f"{p}*") for p in s3_layout.READ_WRITE_PREFIXES]
    prefixes = (*s3_layout.READ_ONLY_PREFIXES, *s3_layout.READ_WRITE_PREFIXES)
    # "base/..." below a prefix, and the bare "base" that S3 consoles and SDKs list first.
    all_prefixes = [*(f"{p}*" for p in prefixes), *(p.rstrip("/") for p in prefixes)]
    return [
        iam.PolicyStatement(
            sid="ListLoraopsPrefixes",
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": all_prefixes}},
        ),
        iam.PolicyStatement(sid="ReadBaseModelsAndDatasets", actions=["s3:GetObject"], resources=read_only),
        # No DeleteObject under adapters/ and merged/: registered packages point there (the bucket policy also
        # refuses every principal's deletes under the registered prefixes).
        iam.PolicyStatement(
            sid="ReadWriteFineTuneOutputs",
            actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            resources=read_write,
        ),
        iam.PolicyStatement(
            sid="DeleteScratchObjects",
            actions=["s3:DeleteObject"],
            resources=[
                bucket.arn_for_objects(f"{p}*")
                for p in s3_layout.READ_WRITE_PREFIXES
                if p not in s3_layout.REGISTERED_PREFIXES
            ],
        ),
    ]


def key_statements(key: kms.IKey) -> list[iam.PolicyStatement]:
    """Use the artifact key for data (not administer it)."""
    return [
        iam.PolicyStatement(
            sid="UseArtifactKey",
            actions=[
                "kms:Decrypt",
                "kms:Encrypt",
                "kms:GenerateDataKey",
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo",
                "kms:DescribeKey",
            ],
            resources=[key.key_arn],
        ),
        # SageMaker attaches the key to the volumes of jobs and endpoints through grants: only for AWS resources.
        iam.PolicyStatement(
            sid="GrantArtifactKeyToAwsResources",
            actions=["kms:CreateGrant"],
            resources=[key.key_arn],
            conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
        ),
    ]


def collection_statements(stack: cdk.Stack) -> list[iam.PolicyStatement]:
    """Model Registry Collections (Resource Groups): create, tag, read and delete only groups that carry the
    ``sagemaker:collection`` tag, as the SageMaker Collections guide prescribes."""
    group_arn = stack.format_arn(service="resource-groups", resource="group", resource_name="*")
    package_group_arn = stack.format_arn(service="sagemaker", resource="model-package-group", resource_name="*")
    return [
        # CreateGroup takes no resource ARN: the request must tag the new group as a collection, with collection
        # tags only.
        iam.PolicyStatement(
            sid="CollectionsCreate",
            actions=["resource-groups:CreateGroup"],
            resources=["*"],
            conditions={
                "StringEquals": {f"aws:RequestTag/{COLLECTION_TAG}": "true"},
                "ForAllValues:StringLike": {"aws:TagKeys": [f"{COLLECTION_TAG}*"]},
            },
        ),
        iam.PolicyStatement(
            sid="CollectionsTagAndDelete",
            actions=["resource-groups:Tag", "resource-groups:DeleteGroup"],
            resources=[group_arn],
            conditions={"StringEquals": {f"aws:ResourceTag/{COLLECTION_TAG}": "true"}},
        ),
        iam.PolicyStatement(
            sid="CollectionsRead",
            actions=["resource-groups:GetGroupQuery", "resource-groups:ListGroupResources"],
            resources=[group_arn],
        ),
        # tag:GetResources has no resource-level permissions: it only accepts "*".
        iam.PolicyStatement(sid="CollectionsSearch", actions=["tag:GetResources"], resources=["*"]),
        iam.PolicyStatement(
            sid="CollectionsTagModelPackageGroups",
            actions=["sagemaker:AddTags", "sagemaker:DeleteTags", "sagemaker:DescribeModelPackageGroup"],
            resources=[package_group_arn],
        ),
    ]


def approval_statements(manual_approval: bool) -> list[iam.PolicyStatement]:
    """Guards that hold whatever else the role may do: the tags that steer policy (``loraops:*``) are never the
    role's to change, and in manual-approval environments it cannot approve a package (on creation or after)."""
    statements = [
        iam.PolicyStatement(
            sid="DenyChangingPolicyTags",
            effect=iam.Effect.DENY,
            actions=["sagemaker:AddTags", "sagemaker:DeleteTags"],
            resources=["*"],
            conditions={"ForAnyValue:StringLike": {"aws:TagKeys": [f"{POLICY_TAG_PREFIX}*"]}},
        )
    ]
    if manual_approval:
        statements.append(
            iam.PolicyStatement(
                sid="DenySelfApproval",
                effect=iam.Effect.DENY,
                actions=["sagemaker:CreateModelPackage", "sagemaker:UpdateModelPackage"],
                resources=["*"],
                conditions={"StringEquals": {"sagemaker:ModelApprovalStatus": "Approved"}},
            )
        )
    return statements


#: What changes what an endpoint serves; only the deploy-on-approval function (and CloudFormation) may do it.
SERVING_CHANGES = (
    "sagemaker:CreateModel",
    "sagemaker:DeleteModel",
    "sagemaker:CreateEndpointConfig",
    "sagemaker:DeleteEndpointConfig",
    "sagemaker:CreateEndpoint",
    "sagemaker:UpdateEndpoint",
    "sagemaker:UpdateEndpointWeightsAndCapacities",
    "sagemaker:DeleteEndpoint",
    "sagemaker:CreateInferenceComponent",
    "sagemaker:UpdateInferenceComponent",
    "sagemaker:UpdateInferenceComponentRuntimeConfig",
    "sagemaker:DeleteInferenceComponent",
)


def serving_guard_statements() -> list[iam.PolicyStatement]:
    """Studio users and jobs (the execution role) never change what an endpoint serves, whatever else grants it:
    an unapproved package reaches the endpoint only through the approval, which invokes deploy-on-approval."""
    return [
        iam.PolicyStatement(
            sid="DenyServingChanges", effect=iam.Effect.DENY, actions=list(SERVING_CHANGES), resources=["*"]
        )
    ]


def job_statements(
    stack: cdk.Stack, role_arn: str, vpc_arn: str, trainer_image_parameter_arn: str, dlc_account: str
) -> list[iam.PolicyStatement]:
    """What training jobs and endpoints running as this role need at run time; ``dlc_account`` publishes the
    AWS Deep Learning Containers in this region."""

    def ec2_arn(resource: str) -> str:
        return stack.format_arn(service="ec2", resource=resource, resource_name="*")

    log_group_arn = stack.format_arn(
        service="logs",
        resource="log-group",
        resource_name="/aws/sagemaker/*",
        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
    )
    return [
        iam.PolicyStatement(
            sid="WriteSageMakerLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[log_group_arn, f"{log_group_arn}:log-stream:*"],
        ),
        iam.PolicyStatement(
            sid="PutMetrics",
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "loraops/*"]}},
        ),
        # ecr:GetAuthorizationToken has no resource-level permissions: it only accepts "*".
        iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
        iam.PolicyStatement(
            sid="PullImages",
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[
                stack.format_arn(service="ecr", account=dlc_account, resource="repository", resource_name="*"),
                stack.format_arn(service="ecr", resource="repository", resource_name="cdk-*"),
            ],
        ),
        # Jobs in the VPC create and delete their network interfaces: only in the loraops VPC.
        iam.PolicyStatement(
            sid="VpcNetworkInterfaces",
            actions=[
                "ec2:CreateNetworkInterface",
                "ec2:CreateNetworkInterfacePermission",
                "ec2:DeleteNetworkInterface",
                "ec2:DeleteNetworkInterfacePermission",
            ],
            resources=[ec2_arn("network-interface"), ec2_arn("subnet"), ec2_arn("security-group")],
            conditions={"ArnEquals": {"ec2:Vpc": vpc_arn}},
        ),
        iam.PolicyStatement(
            sid="DescribeNetwork",
            actions=[
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeVpcs",
                "ec2:DescribeDhcpOptions",
                "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups",
            ],
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="ReadTrainerImageUri",
            actions=["ssm:GetParameter"],
            resources=[trainer_image_parameter_arn],
        ),
        pass_role_statement("PassOwnRoleToSageMaker", role_arn),
    ]
