"""The grants a promotion needs (``promote_from`` in cdk.json), on both sides, and nothing more.

- **target** (prod): the ``promote`` function, outside the VPC (the source's registry and bucket may be in another
  region, which the VPC's gateway endpoint does not reach), with a role of a fixed name,
  ``loraops-<target>-promote``, so the source can name it. It reads the source's registered prefixes, describes the
  source's packages of the groups both environments have, decrypts through S3 with the source's key, and writes the
  same prefixes of its own bucket. Prod's VPC-only bucket Deny exempts it by that name (``infra.stacks.storage``).
- **source** (staging): its bucket policy and key policy let that one role (named by ``aws:PrincipalArn``, the
  principal being its account, so a policy never names a role that does not exist yet) read ``base/`` and
  ``finetuned/`` and nothing else; each group's resource policy lets it describe the group's packages.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3

from infra.parts.policies import list_prefixes
from infra.props import PromotionProps
from loraops import s3_layout

#: What promotions read in the source: the prefixes registered packages point at.
PROMOTED_PREFIXES = s3_layout.VERSION_PREFIXES

WILDCARD_REASONS = {
    "ReadPromotionSource": "Packages lie under base/ and finetuned/ of the source bucket, named at run time; "
    "the source's bucket policy grants only these prefixes.",
    "ListPromotionSource": "ListBucket on the source bucket, limited by an s3:prefix condition to base/ and "
    "finetuned/.",
    "DescribeSourcePackages": "Package versions of the source's groups are numbered at run time; only the groups "
    "this environment also has.",
    "DecryptPromotionSource": "The source's key id is generated (it lives in the source's stacks); decryption is "
    "limited to S3 in the source's region and to objects of the source bucket (encryption context).",
    "WritePromotedArtifacts": "A promotion writes the package's own prefix (under base/ or finetuned/), "
    "named at run time; the bucket policy admits only conditional writes there.",
}
OUTSIDE_VPC = (
    "Reads the source environment's registry and bucket, which may be in another region (out of reach of the VPC's "
    "gateway endpoint); prod's bucket policy admits its role by name."
)


def promote_environment(props: PromotionProps) -> dict[str, str]:
    source = props.source
    assert source is not None
    return {
        "SOURCE_ENVIRONMENT": source.name,
        "SOURCE_ACCOUNT": source.account,
        "SOURCE_REGION": source.region,
        "SOURCE_BUCKET": source.artifact_bucket_name,
    }


def promote_statements(stack: cdk.Stack, props: PromotionProps) -> list[iam.PolicyStatement]:
    """The promote function's own statements (the registration stack adds the registering ones)."""
    source = props.source
    assert source is not None
    partition = stack.partition
    source_bucket = f"arn:{partition}:s3:::{source.artifact_bucket_name}"
    own_bucket = f"arn:{partition}:s3:::{props.artifact_bucket_name}"
    return [
        iam.PolicyStatement(
            sid="ReadPromotionSource",
            actions=["s3:GetObject", "s3:GetObjectVersion"],
            resources=[f"{source_bucket}/{p}*" for p in PROMOTED_PREFIXES],
        ),
        list_prefixes("ListPromotionSource", source_bucket, PROMOTED_PREFIXES),
        iam.PolicyStatement(
            sid="DescribeSourcePackages",
            actions=["sagemaker:DescribeModelPackage"],
            resources=[
                f"arn:{partition}:sagemaker:{source.region}:{source.account}:model-package/{group}/*"
                for group in props.groups
            ],
        ),
        iam.PolicyStatement(
            sid="DecryptPromotionSource",
            actions=["kms:Decrypt"],
            resources=[f"arn:{partition}:kms:{source.region}:{source.account}:key/*"],
            conditions={
                "StringEquals": {
                    "kms:ViaService": f"s3.{source.region}.amazonaws.com",
                    # S3 Bucket Keys: the encryption context is the bucket's ARN
                    "kms:EncryptionContext:aws:s3:arn": source_bucket,
                }
            },
        ),
        iam.PolicyStatement(
            sid="WritePromotedArtifacts",
            actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[f"{own_bucket}/{p}*" for p in PROMOTED_PREFIXES],
        ),
    ]


def _promoters(stack: cdk.Stack, props: PromotionProps) -> tuple[list[iam.IPrincipal], dict]:
    """The target accounts as principals, and the condition naming their promote roles."""
    targets = props.targets
    roles = [f"arn:{stack.partition}:iam::{t.account}:role/{t.promote_role_name}" for t in targets]
    accounts = sorted({t.account for t in targets})
    return [iam.AccountPrincipal(a) for a in accounts], {"ArnEquals": {"aws:PrincipalArn": roles}}


def grant_promotion_reads(stack: cdk.Stack, props: PromotionProps, bucket: s3.Bucket, key: kms.Key) -> None:
    """Source side: the targets' promote roles may read the registered prefixes of ``bucket`` (through S3 with
    ``key``), nothing else."""
    principals, named = _promoters(stack, props)
    bucket.add_to_resource_policy(
        iam.PolicyStatement(
            sid="PromotionReadsRegisteredPrefixes",
            principals=principals,
            actions=["s3:GetObject", "s3:GetObjectVersion"],
            resources=[bucket.arn_for_objects(f"{p}*") for p in PROMOTED_PREFIXES],
            conditions=named,
        )
    )
    bucket.add_to_resource_policy(
        iam.PolicyStatement(
            sid="PromotionListsRegisteredPrefixes",
            principals=principals,
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={**named, "StringLike": {"s3:prefix": [f"{p}*" for p in PROMOTED_PREFIXES]}},
        )
    )
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="PromotionDecryptsThroughS3",
            principals=principals,
            actions=["kms:Decrypt"],
            resources=["*"],  # a key policy's resource is the key itself
            conditions={
                **named,
                "StringEquals": {
                    "kms:ViaService": f"s3.{props.region}.amazonaws.com",
                    # S3 Bucket Keys: the encryption context is the bucket's ARN
                    "kms:EncryptionContext:aws:s3:arn": f"arn:{stack.partition}:s3:::{props.artifact_bucket_name}",
                },
            },
        )
    )


def group_policy(stack: cdk.Stack, props: PromotionProps, group: str) -> dict | None:
    """Source side: the resource policy of package group ``group`` letting the targets' promote roles describe its
    packages; ``None`` where no environment promotes from this one."""
    if not props.targets:
        return None
    principals, named = _promoters(stack, props)
    statement = iam.PolicyStatement(
        sid="PromotionDescribesPackages",
        principals=principals,
        actions=["sagemaker:DescribeModelPackage"],
        resources=[stack.format_arn(service="sagemaker", resource="model-package", resource_name=f"{group}/*")],
        conditions=named,
    )
    return iam.PolicyDocument(statements=[statement]).to_json()
