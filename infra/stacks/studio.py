"""Studio: the VPC-only SageMaker domain, its user profiles and the SageMaker execution role."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra import execution_role, sagemaker_policy
from infra.nag import acknowledge_wildcards
from infra.props import EnvironmentBasics, Placement
from infra.stacks.training import trainer_image_parameter, training_base_image


@dataclass(frozen=True, kw_only=True)
class StudioProps(EnvironmentBasics):
    """The execution role's name, bucket and instance types; user profiles; whether packages approve themselves."""

    artifact_bucket_name: str
    execution_role_name: str
    auto_approve: bool
    allowed_instance_types: tuple[str, ...]
    studio_instance_types: tuple[str, ...]
    user_profiles: tuple[str, ...]


class StudioStack(cdk.Stack):
    """SageMaker domain (``VpcOnly``, IAM auth, KMS storage) and the execution role its users run as."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        props: StudioProps,
        key: kms.IKey,
        placement: Placement,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # Imported by name (not by reference) so every policy ARN is a literal nag can match exactly.
        bucket = s3.Bucket.from_bucket_name(self, "ArtifactBucket", props.artifact_bucket_name)

        self.role = iam.Role(
            self,
            "ExecutionRole",
            role_name=props.execution_role_name,
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="loraops: Studio users, training jobs and endpoints",
        )
        statements = [
            *execution_role.bucket_statements(bucket),
            *execution_role.key_statements(key),
            *execution_role.collection_statements(self),
            *execution_role.approval_statements(manual_approval=not props.auto_approve),
            *execution_role.job_statements(
                self,
                self.role.role_arn,
                vpc_arn=placement.vpc_arn,
                trainer_image_parameter_arn=self.format_arn(
                    service="ssm", resource="parameter", resource_name=trainer_image_parameter(props.prefix)[1:]
                ),
                dlc_account=training_base_image(props.region).split(".", 1)[0],
            ),
            *sagemaker_policy.sagemaker_statements(
                self,
                sagemaker_policy.training_job_conditions(
                    [s.subnet_id for s in placement.subnets],
                    [placement.security_group.security_group_id],
                    key.key_arn,
                    list(props.allowed_instance_types),
                ),
                list(props.studio_instance_types),
            ),
            *execution_role.serving_guard_statements(),
        ]
        policy = iam.Policy(self, "ExecutionPolicy", statements=statements)
        policy.attach_to_role(self.role)
        acknowledge_wildcards(policy, statements, execution_role.WILDCARD_REASONS)

        self.domain = sagemaker.CfnDomain(
            self,
            "Domain",
            domain_name=props.prefix,
            auth_mode="IAM",
            app_network_access_type="VpcOnly",
            vpc_id=placement.vpc.vpc_id,
            subnet_ids=[s.subnet_id for s in placement.subnets],
            kms_key_id=key.key_id,
            default_user_settings=sagemaker.CfnDomain.UserSettingsProperty(
                execution_role=self.role.role_arn,
                security_groups=[placement.security_group.security_group_id],
                studio_web_portal="ENABLED",
                default_landing_uri="studio::",
            ),
            domain_settings=sagemaker.CfnDomain.DomainSettingsProperty(
                security_group_ids=[placement.security_group.security_group_id],
            ),
            app_security_group_management="Service",
        )
        self.domain.node.add_dependency(policy)
        for profile in props.user_profiles:
            sagemaker.CfnUserProfile(
                self,
                f"User-{profile}",
                domain_id=self.domain.attr_domain_id,
                user_profile_name=profile,
                user_settings=sagemaker.CfnUserProfile.UserSettingsProperty(
                    execution_role=self.role.role_arn,
                    security_groups=[placement.security_group.security_group_id],
                ),
            )
        cdk.CfnOutput(self, "DomainId", value=self.domain.attr_domain_id)
        cdk.CfnOutput(self, "ExecutionRoleArn", value=self.role.role_arn)
