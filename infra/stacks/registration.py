"""Registration: when a loraops training job completes, the register-finetune function registers its output.

EventBridge ("SageMaker Training Job State Change", Completed, jobs tagged with their package group) invokes the
function (in the VPC, through its endpoints); Powertools idempotency keeps one package per job in a DynamoDB
table; events the function cannot take after the retries land in an encrypted dead-letter queue.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import execution_role
from infra.config import EnvironmentConfig
from infra.functions import function_code
from infra.logs import encrypted_log_group
from infra.nag import acknowledge, ignore_redundant_role_dependency
from infra.stacks.network import Placement
from infra.stacks.storage import removal_policy
from loraops import s3_layout
from loraops.events import TRAINING_JOB_COMPLETED

#: Why each statement of the function's policy that holds a wildcard needs it.
WILDCARD_REASONS = {
    "ReadJobOutputs": "Training jobs write under adapters/ and merged/ with job names chosen at run time; the "
    "function reads only those two prefixes of the one bucket.",
    "ListJobOutputs": "ListBucket is limited by an s3:prefix condition to adapters/ and merged/.",
    "RegisterPackages": "Package versions and groups are named at run time; limited to this account and region.",
    "FunctionNetworkInterfaces": "Lambda creates the function's network interfaces in the loraops VPC (named at "
    "run time; limited by an ec2:Vpc condition).",
    "DescribeNetwork": "EC2 Describe* calls support no resource-level permissions; they only accept '*'.",
    "WriteLogs": "Log streams are named at run time inside the function's own log group.",
}


class RegistrationStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        key: kms.IKey,
        placement: Placement,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        name = f"{config.prefix}-register-finetune"
        self.table = dynamodb.Table(
            self,
            "IdempotencyTable",
            table_name=f"{config.prefix}-registration-idempotency",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            time_to_live_attribute="expiration",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=removal_policy(config),
        )
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(14),
        )
        acknowledge(self.dead_letters, "AwsSolutions-SQS3", "This queue is the dead-letter queue itself.")
        log_group = encrypted_log_group(self, "FunctionLogs", config, "register-finetune", f"/aws/lambda/{name}")
        self.role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"loraops {config.name}: the register-finetune function",
        )
        statements = self._statements(config, key, placement.vpc_arn, name)
        policy = iam.Policy(self, "FunctionPolicy", statements=statements)
        policy.attach_to_role(self.role)
        for finding, reason in execution_role.wildcard_findings(statements, WILDCARD_REASONS):
            acknowledge(policy, "AwsSolutions-IAM5", reason, finding)

        self.function = lambda_.Function(
            self,
            "RegisterFinetune",
            function_name=name,
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=function_code("register_finetune"),
            role=self.role,
            timeout=cdk.Duration.minutes(5),
            memory_size=512,
            vpc=placement.vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=placement.subnets),
            security_groups=[placement.security_group],
            environment={
                "ARTIFACT_BUCKET": config.artifact_bucket_name,
                "APPROVAL": config.approval,
                "IDEMPOTENCY_TABLE": self.table.table_name,
                "POWERTOOLS_SERVICE_NAME": "loraops-register-finetune",
            },
            environment_encryption=key,
            reserved_concurrent_executions=5,
            dead_letter_queue=self.dead_letters,
            log_group=log_group,
        )
        self.function.node.add_dependency(policy)
        ignore_redundant_role_dependency(self.function.node.default_child)
        self.rule = events.Rule(
            self,
            "TrainingJobCompleted",
            description="A loraops training job completed: register its output",
            event_pattern=events.EventPattern(
                source=TRAINING_JOB_COMPLETED["source"],
                detail_type=TRAINING_JOB_COMPLETED["detail-type"],
                detail=TRAINING_JOB_COMPLETED["detail"],
            ),
            targets=[
                targets.LambdaFunction(
                    self.function,
                    dead_letter_queue=self.dead_letters,
                    retry_attempts=8,
                    max_event_age=cdk.Duration.hours(6),
                )
            ],
        )

    def _statements(
        self, config: EnvironmentConfig, key: kms.IKey, vpc_arn: str, function_name: str
    ) -> list[iam.PolicyStatement]:
        bucket = f"arn:{self.partition}:s3:::{config.artifact_bucket_name}"
        outputs = (s3_layout.ADAPTERS, s3_layout.MERGED)

        def arn(service: str, resource: str, name: str = "*") -> str:
            return self.format_arn(service=service, resource=resource, resource_name=name)

        return [
            iam.PolicyStatement(
                sid="ReadJobOutputs", actions=["s3:GetObject"], resources=[f"{bucket}/{p}*" for p in outputs]
            ),
            iam.PolicyStatement(
                sid="ListJobOutputs",
                actions=["s3:ListBucket"],
                resources=[bucket],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in outputs]}},
            ),
            iam.PolicyStatement(
                sid="UseArtifactKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn]
            ),
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
            *execution_role.approval_statements(manual_approval=not config.auto_approve),
            iam.PolicyStatement(
                sid="IdempotencyRecords",
                actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
                resources=[self.table.table_arn],
            ),
            iam.PolicyStatement(
                sid="DeadLetters", actions=["sqs:SendMessage"], resources=[self.dead_letters.queue_arn]
            ),
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
            iam.PolicyStatement(
                sid="WriteLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    self.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name=f"/aws/lambda/{function_name}:log-stream:*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            ),
        ]
