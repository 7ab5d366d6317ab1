"""Storage: the customer-managed KMS key, the artifact bucket and its access-log bucket."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import promotion
from infra.nag import acknowledge, acknowledge_cdk_provider, acknowledge_wildcards, skip_checkov
from infra.parts.keys import environment_key
from infra.parts.policies import list_prefixes
from infra.props import EnvironmentBasics, PromotionProps, removal_policy
from loraops import s3_layout

INCOMPLETE_UPLOAD_DAYS = 7


#: Object-level actions that ``vpc_endpoint_only_bucket_access`` confines to the VPC's S3 endpoint.
OBJECT_ACTIONS = ["s3:GetObject*", "s3:PutObject*", "s3:DeleteObject*", "s3:ListBucket*", "s3:RestoreObject"]


@dataclass(frozen=True, kw_only=True)
class StorageProps(EnvironmentBasics):
    """The bucket and its lifecycle, the roles its VPC-only policy exempts by name, and the promotion grants."""

    account: str
    artifact_bucket_name: str
    noncurrent_version_days: int
    vpc_endpoint_only_bucket_access: bool
    execution_role_name: str
    import_base_role_name: str
    promote_role_name: str
    dataset_upload_role_name: str
    promotion: PromotionProps


class StorageStack(cdk.Stack):
    """KMS key (rotated) and the SSE-KMS, versioned, SSL-only artifact bucket."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        props: StorageProps,
        s3_endpoint: ec2.IGatewayVpcEndpoint,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        policy = removal_policy(props)
        destroy = props.removal_policy == "destroy"

        self.key = environment_key(
            self, "ArtifactKey", props, "artifacts", "model artifacts, datasets and Studio storage"
        )

        self.log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            # S3 server access logs can only be delivered to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=cdk.Duration.days(props.log_retention_days),
                    noncurrent_version_expiration=cdk.Duration.days(1),
                )
            ],
            removal_policy=policy,
            auto_delete_objects=destroy,
        )
        acknowledge(
            self.log_bucket,
            "AwsSolutions-S1",
            "This bucket is the access-log destination; logging its own access would loop.",
        )
        skip_checkov(
            self.log_bucket.node.default_child,
            {"CKV_AWS_18": "This bucket is the access-log destination; logging its own access would loop."},
        )

        self.bucket = s3.Bucket(
            self,
            "ArtifactBucket",
            bucket_name=props.artifact_bucket_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            versioned=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="artifact-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=cdk.Duration.days(props.noncurrent_version_days),
                ),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(INCOMPLETE_UPLOAD_DAYS),
                ),
            ],
            removal_policy=policy,
            auto_delete_objects=destroy,
        )
        self._write_once_registered_artifacts(props)
        self._write_once_finetune_versions(props)
        if props.vpc_endpoint_only_bucket_access:
            self._confine_objects_to_the_vpc(props, s3_endpoint)
            self.dataset_upload_role = self._dataset_upload_role(props)
        if props.promotion.targets:
            promotion.grant_promotion_reads(self, props.promotion, self.bucket, self.key)
        if destroy:
            self._acknowledge_auto_delete_provider()
        cdk.CfnOutput(self, "ArtifactBucketName", value=self.bucket.bucket_name)
        cdk.CfnOutput(self, "ArtifactKeyArn", value=self.key.key_arn)

    def _write_once_registered_artifacts(self, props: StorageProps) -> None:
        """What registered packages point at cannot change, whoever asks (the bucket policy binds every role the
        stacks create, and any other):

        - under ``base/`` (content-addressed versions) an object is only created with a conditional write
          (``If-None-Match: *``): S3 refuses to replace an existing key, so a version's bytes never change;
        - under ``base/``, ``adapters/`` and ``merged/`` no object or object version is ever deleted. Job outputs
          are written by SageMaker without conditional writes, so a job's role could still put a new current
          version over one; the deploy path verifies the registered digests before it serves (and the old version
          stays, undeletable).

        In ``destroy`` environments CDK's auto-delete provider may still empty the bucket on teardown."""
        # PutObject, CopyObject and CompleteMultipartUpload create objects (ObjectCreationOperation true);
        # CreateMultipartUpload and UploadPart do not, and carry no If-None-Match.
        self._refuse_overwrites("WriteOnceVersions", s3_layout.WRITE_ONCE_PREFIXES)
        self._refuse_deletes("NeverDeleteRegisteredArtifacts", s3_layout.REGISTERED_PREFIXES, props)

    def _write_once_finetune_versions(self, props: StorageProps) -> None:
        """Registered fine-tune versions (``finetuned/``: the registration copies a job's files there, server-side,
        and the package points there) are written once and never deleted, whoever asks: S3 refuses to replace a key
        written with ``If-None-Match: *``, so what an approved package serves cannot change even though the job's
        own output under ``adapters/`` or ``merged/`` can. Only CDK's teardown provider of a ``destroy``
        environment may empty them."""
        # the registration copies with UploadPartCopy parts (no ObjectCreationOperation, no If-None-Match) and
        # completes with If-None-Match; CopyObject, which cannot carry it here, is refused
        self._refuse_overwrites("WriteOnceFineTuneVersions", s3_layout.FINETUNED_PREFIXES)
        self._refuse_deletes("NeverDeleteFineTuneVersions", s3_layout.FINETUNED_PREFIXES, props)

    def _refuse_overwrites(self, sid: str, prefixes: tuple[str, ...]) -> None:
        """Every principal is refused creating an object under ``prefixes`` without ``If-None-Match: *`` (with it,
        S3 refuses to replace an existing key)."""
        writes = {"Null": {"s3:if-none-match": "true"}, "Bool": {"s3:ObjectCreationOperation": "true"}}
        self._deny_everyone(sid, ["s3:PutObject"], prefixes, writes)

    def _refuse_deletes(self, sid: str, prefixes: tuple[str, ...], props: StorageProps) -> None:
        """Every principal is refused deleting an object or object version under ``prefixes``; in ``destroy``
        environments except CDK's auto-delete provider, which empties the bucket on teardown."""
        conditions = None
        if props.removal_policy == "destroy":
            teardown = f"arn:{self.partition}:iam::{props.account}:role/{self.stack_name}-CustomS3AutoDeleteObjects*"
            conditions = {"ArnNotLike": {"aws:PrincipalArn": teardown}}
        self._deny_everyone(sid, ["s3:DeleteObject", "s3:DeleteObjectVersion"], prefixes, conditions)

    def _deny_everyone(
        self, sid: str, actions: list[str], prefixes: tuple[str, ...], conditions: dict[str, dict[str, str]] | None
    ) -> None:
        """A bucket-policy Deny of ``actions`` on the objects under ``prefixes`` to every principal (where
        ``conditions`` hold)."""
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid=sid,
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=actions,
                resources=[self.bucket.arn_for_objects(f"{p}*") for p in prefixes],
                conditions=conditions,
            )
        )

    def _confine_objects_to_the_vpc(self, props: StorageProps, s3_endpoint: ec2.IGatewayVpcEndpoint) -> None:
        """Objects are reached only through the VPC's S3 endpoint, except by roles named here: the SageMaker execution
        role, which SageMaker also uses from its own network (model downloads for endpoints, job output uploads); the
        import-base function's (it reaches the Hub, and the VPC has no route to the internet); the promote function's
        (the source environment's registry and bucket may be in another region); the dataset-upload role operators
        assume to put training data under ``datasets/`` and nowhere else."""
        names = [props.execution_role_name, props.import_base_role_name, props.dataset_upload_role_name]
        if props.promotion.source:
            names.append(props.promote_role_name)
        exempt = [f"arn:{self.partition}:iam::{props.account}:role/{name}" for name in names]
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ObjectsOnlyThroughTheVpcEndpoint",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=OBJECT_ACTIONS,
                resources=[self.bucket.bucket_arn, self.bucket.arn_for_objects("*")],
                conditions={
                    "StringNotEquals": {"aws:SourceVpce": s3_endpoint.vpc_endpoint_id},
                    "ArnNotEquals": {"aws:PrincipalArn": exempt},
                },
            )
        )

    def _dataset_upload_role(self, props: StorageProps) -> iam.Role:
        """Operators upload datasets to a VPC-only bucket with this role (``aws s3 cp`` from anywhere): it may put
        objects under ``datasets/`` and list that prefix, nothing else. Whoever the account's IAM lets assume it may."""
        role = iam.Role(
            self,
            "DatasetUploadRole",
            role_name=props.dataset_upload_role_name,
            assumed_by=iam.AccountRootPrincipal(),
            description=f"loraops {props.name}: uploads training data under datasets/ from outside the VPC",
        )
        bucket = f"arn:{self.partition}:s3:::{props.artifact_bucket_name}"
        statements = [
            iam.PolicyStatement(
                sid="UploadDatasets",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[f"{bucket}/{s3_layout.DATASETS}*"],
            ),
            list_prefixes("ListDatasets", bucket, (s3_layout.DATASETS,)),
            # multipart uploads of SSE-KMS objects need Decrypt as well as GenerateDataKey
            iam.PolicyStatement(
                sid="EncryptDatasets", actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[self.key.key_arn]
            ),
        ]
        policy = iam.Policy(self, "DatasetUploadPolicy", statements=statements)
        policy.attach_to_role(role)
        reasons = {
            "UploadDatasets": "Datasets lie under datasets/<name>/<digest>/, named at upload time; nothing else.",
            "ListDatasets": "ListBucket is limited by an s3:prefix condition to datasets/.",
        }
        acknowledge_wildcards(policy, statements, reasons)
        return role

    def _acknowledge_auto_delete_provider(self) -> None:
        """CDK's singleton provider behind ``auto_delete_objects`` (dev only): its role and runtime are CDK's."""
        provider = self.node.try_find_child("Custom::S3AutoDeleteObjectsCustomResourceProvider")
        if provider is not None:
            acknowledge_cdk_provider(provider, "auto-delete-objects (destroy environments only)")
