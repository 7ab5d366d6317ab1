"""Storage: the customer-managed KMS key, the artifact bucket and its access-log bucket."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import EnvironmentConfig
from infra.nag import acknowledge

INCOMPLETE_UPLOAD_DAYS = 7


def removal_policy(config: EnvironmentConfig) -> cdk.RemovalPolicy:
    return cdk.RemovalPolicy.DESTROY if config.removal_policy == "destroy" else cdk.RemovalPolicy.RETAIN


class StorageStack(cdk.Stack):
    """KMS key (rotated) and the SSE-KMS, versioned, SSL-only artifact bucket."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        policy = removal_policy(config)

        self.key = kms.Key(
            self,
            "ArtifactKey",
            alias=f"alias/{config.prefix}-artifacts",
            description=f"loraops {config.name}: model artifacts, datasets and Studio storage",
            enable_key_rotation=True,
            removal_policy=policy,
        )

        self.log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            # S3 server access logs can only be delivered to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=cdk.Duration.days(config.log_retention_days))
            ],
            removal_policy=policy,
        )
        acknowledge(
            self.log_bucket,
            "AwsSolutions-S1",
            "This bucket is the access-log destination; logging its own access would loop.",
        )

        self.bucket = s3.Bucket(
            self,
            "ArtifactBucket",
            bucket_name=config.artifact_bucket_name,
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
                    noncurrent_version_expiration=cdk.Duration.days(config.noncurrent_version_days),
                ),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(INCOMPLETE_UPLOAD_DAYS),
                ),
            ],
            removal_policy=policy,
        )
        cdk.CfnOutput(self, "ArtifactBucketName", value=self.bucket.bucket_name)
        cdk.CfnOutput(self, "ArtifactKeyArn", value=self.key.key_arn)
