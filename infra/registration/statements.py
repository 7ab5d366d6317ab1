"""The policy statements of the registration functions, and why each wildcard among them is needed."""

from __future__ import annotations

from collections.abc import Callable

import aws_cdk as cdk
from aws_cdk import aws_iam as iam

from infra import execution_role, promotion
from infra.parts.policies import list_prefixes
from infra.registration.props import RegistrationProps
from loraops import s3_layout

#: Why each statement of a function's policy that holds a wildcard needs it.
WILDCARD_REASONS = {
    "ReadJobOutputs": "Training jobs write under adapters/ and merged/ with job names chosen at run time; the "
    "function reads only those two prefixes of the one bucket.",
    "ListJobOutputs": "ListBucket is limited by an s3:prefix condition to adapters/ and merged/.",
    "ReadFineTuneVersions": "Registered fine-tunes lie under finetuned/<group>/<content digest>/, named by their "
    "bytes at run time.",
    "ListFineTuneVersions": "ListBucket is limited by an s3:prefix condition to finetuned/.",
    "WriteFineTuneVersions": "Registration copies a job's files to finetuned/<group>/<content digest>/ (known only "
    "once the manifest is read); the bucket policy makes every key there write-once.",
    "ReadBaseModels": "Base models lie under base/<group>/<weights digest>/, named by their bytes at run time.",
    "ListBaseModels": "ListBucket is limited by an s3:prefix condition to base/.",
    "WriteBaseModels": "An import writes base/<group>/<content digest>/ (known only once the bytes are read) and "
    "stages the bytes under staging/base/<run>/ first.",
    "ListImportPrefixes": "ListBucket is limited by an s3:prefix condition to base/ and staging/.",
    "ReadImportSources": "The import sources cdk.json lists are prefixes; the models under them are named later.",
    "ListImportSources": "ListBucket on the source buckets, limited by an s3:prefix condition to the sources.",
    "ReadHubToken": "Secrets Manager appends six random characters to a secret's ARN.",
    "RegisterPackages": "Package versions and groups are named at run time; limited to this account and region.",
    "FunctionNetworkInterfaces": "Lambda creates the function's network interfaces in the loraops VPC (named at "
    "run time; limited by an ec2:Vpc condition).",
    "DescribeNetwork": "EC2 Describe* calls support no resource-level permissions; they only accept '*'.",
    "WriteLogs": "Log streams are named at run time inside the function's own log group.",
    "RemoveStagedBytes": "Staged bytes lie under staging/base/<run>/, named per import at run time.",
    "RegistrationClaims": "One claim object per registration in progress, named by the group and the digest at "
    "run time, under registrations/ only.",
    "ReadPackages": "Package versions are numbered at run time; limited to this account and region.",
    "CreateGuardedModels": "Models are named per package at run time under this environment's prefix; each must "
    "run in the loraops VPC, network-isolated (conditions).",
    "CreateGuardedEndpointConfigs": "Endpoint configs are named per package at run time under this environment's "
    "prefix; limited to the allowed instance types (conditions).",
    "DeployModels": "Models, endpoint configs and components a deployment creates are named per package at run "
    "time; limited to this environment's name prefix.",
    "ReadServingResources": "The serving stack's model and endpoint config carry names CloudFormation generates; "
    "describe only.",
    **promotion.WILDCARD_REASONS,
}

#: ``arn(service, resource, name="*")``: an ARN of the stack's account and region.
ArnOf = Callable[..., str]


def arn_of(stack: cdk.Stack) -> ArnOf:
    def arn(service: str, resource: str, name: str = "*") -> str:
        return stack.format_arn(service=service, resource=resource, resource_name=name)

    return arn


def read(bucket_arn: str, what: str, prefixes: tuple[str, ...]) -> list[iam.PolicyStatement]:
    """GetObject under ``prefixes`` of the artifact bucket and ListBucket limited to them."""
    return [
        iam.PolicyStatement(
            sid=f"Read{what}", actions=["s3:GetObject"], resources=[f"{bucket_arn}/{p}*" for p in prefixes]
        ),
        list_prefixes(f"List{what}", bucket_arn, prefixes),
    ]


def import_statements(partition: str, bucket_arn: str, props: RegistrationProps) -> list[iam.PolicyStatement]:
    """import-base: write base/ (staging first), read the configured sources and the Hub token."""
    prefixes = (s3_layout.BASE, s3_layout.STAGING)
    statements = [
        # Writes under base/ are conditional (write-once, enforced by the bucket policy) and never deleted;
        # staged bytes are removed once written.
        iam.PolicyStatement(
            sid="WriteBaseModels",
            actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[f"{bucket_arn}/{s3_layout.BASE}*", f"{bucket_arn}/{s3_layout.STAGING}base/*"],
        ),
        iam.PolicyStatement(
            sid="RemoveStagedBytes",
            actions=["s3:DeleteObject"],
            resources=[f"{bucket_arn}/{s3_layout.STAGING}base/*"],
        ),
        list_prefixes("ListImportPrefixes", bucket_arn, prefixes),
    ]
    if props.base_import_sources:
        sources = [s3_layout.split_s3_uri(uri) for uri in props.base_import_sources]
        statements += [
            iam.PolicyStatement(
                sid="ReadImportSources",
                actions=["s3:GetObject"],
                resources=[f"arn:{partition}:s3:::{b}/{k}*" for b, k in sources],
            ),
            iam.PolicyStatement(
                sid="ListImportSources",
                actions=["s3:ListBucket"],
                resources=sorted({f"arn:{partition}:s3:::{b}" for b, _ in sources}),
                conditions={"StringLike": {"s3:prefix": [f"{k}*" for _, k in sources]}},
            ),
        ]
    if props.hub_token_secret_arn:
        statements.append(
            iam.PolicyStatement(
                sid="ReadHubToken",
                actions=["secretsmanager:GetSecretValue"],
                resources=[f"{props.hub_token_secret_arn}-??????"],
            )
        )
    return statements


def registering(arn: ArnOf, bucket_arn: str, table_arn: str, *, manual_approval: bool) -> list[iam.PolicyStatement]:
    """Create and read packages, the approval guard and the idempotency records."""
    return [
        iam.PolicyStatement(
            sid="RegisterPackages",
            actions=[
                "sagemaker:CreateModelPackage",
                "sagemaker:DescribeModelPackage",
                "sagemaker:ListModelPackages",
                "sagemaker:DescribeModelPackageGroup",
                "sagemaker:ListTags",
            ],
            resources=[arn("sagemaker", "model-package"), arn("sagemaker", "model-package-group")],
        ),
        *execution_role.approval_statements(manual_approval=manual_approval),
        iam.PolicyStatement(
            sid="RegistrationClaims",
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            resources=[f"{bucket_arn}/{s3_layout.REGISTRATIONS}*"],
        ),
        iam.PolicyStatement(
            sid="ReadEnvironmentTag",  # the registry checks a group's environment against the bucket's tag
            actions=["s3:GetBucketTagging"],
            resources=[bucket_arn],
        ),
        iam.PolicyStatement(
            sid="IdempotencyRecords",
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            resources=[table_arn],
        ),
    ]


def reading_packages(arn: ArnOf) -> iam.PolicyStatement:
    """Describe and list packages only (a function that registers nothing)."""
    return iam.PolicyStatement(
        sid="ReadPackages",
        actions=["sagemaker:DescribeModelPackage", "sagemaker:ListModelPackages"],
        resources=[arn("sagemaker", "model-package"), arn("sagemaker", "model-package-group")],
    )


def write_logs(stack: cdk.Stack, function_name: str) -> iam.PolicyStatement:
    """Streams of the function's own log group."""
    return iam.PolicyStatement(
        sid="WriteLogs",
        actions=["logs:CreateLogStream", "logs:PutLogEvents"],
        resources=[
            stack.format_arn(
                service="logs",
                resource="log-group",
                resource_name=f"/aws/lambda/{function_name}:log-stream:*",
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
            )
        ],
    )


def network(arn: ArnOf, vpc_arn: str) -> list[iam.PolicyStatement]:
    """The function's network interfaces in the loraops VPC."""
    return [
        iam.PolicyStatement(
            sid="FunctionNetworkInterfaces",
            actions=[
                "ec2:CreateNetworkInterface",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ],
            resources=[arn("ec2", "network-interface"), arn("ec2", "subnet"), arn("ec2", "security-group")],
            conditions={"ArnEquals": {"ec2:Vpc": vpc_arn}},
        ),
        iam.PolicyStatement(sid="DescribeNetwork", actions=["ec2:DescribeNetworkInterfaces"], resources=["*"]),
    ]
