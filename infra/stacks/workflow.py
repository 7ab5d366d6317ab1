"""The fine-tune workflow: a Step Functions state machine (definition in ``infra/workflow.py``) that trains the
newest approved base model with the trainer image; ``loraops finetune start`` starts it. A failed or timed-out
execution notifies the environment's alarm topic."""

from __future__ import annotations

import json
from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import alarms, sagemaker_policy
from infra.logs import encrypted_log_group
from infra.nag import acknowledge, acknowledge_wildcards, ignore_redundant_role_dependency
from infra.parts.outputs import published_output
from infra.parts.policies import pass_role_statement, role_arn
from infra.props import Alerting, Placement
from infra.workflow import WorkflowSettings, definition

#: Why each statement of the workflow's policy that holds a wildcard needs it.
WILDCARD_REASONS = {
    "FindApprovedBase": "Package versions of the base group are numbered at run time (model-package/<group>/<n>).",
    "ListModelPackages": "ListModelPackages supports no resource-level permissions; it only accepts '*'.",
    "StartTrainingJobs": "Job names are chosen per request; limited to loraops-* jobs, and by conditions to the "
    "VPC's subnets and security group, network isolation, the artifact key and the allowed instance types.",
    "TagTrainingJobs": "Job names are chosen per request; limited to loraops-* jobs (tagged on creation).",
    "WatchTrainingJobs": "Job names are chosen per request; limited to loraops-* jobs.",
    "DeliverLogs": "CloudWatch Logs delivery APIs support no resource-level permissions.",
    "Tracing": "X-Ray's write APIs support no resource-level permissions.",
}


def workflow_parameter(prefix: str) -> str:
    """SSM parameter holding the fine-tune workflow's state machine ARN (``loraops finetune start`` reads it)."""
    return f"/{prefix}/finetune-workflow-arn"


@dataclass(frozen=True, kw_only=True)
class WorkflowProps(Alerting):
    """The execution role the jobs run as, the instance types they may ask for, the base model's group."""

    execution_role_name: str
    allowed_instance_types: tuple[str, ...]
    base_group: str


class WorkflowStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        props: WorkflowProps,
        key: kms.IKey,
        placement: Placement,
        trainer_image: str,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        execution_role_arn = role_arn(self, props.execution_role_name)
        subnets = [subnet.subnet_id for subnet in placement.subnets]
        settings = WorkflowSettings(
            environment=props.name,
            trainer_image=trainer_image,
            execution_role_arn=execution_role_arn,
            key_arn=key.key_arn,
            subnet_ids=subnets,
            security_group_ids=[placement.security_group.security_group_id],
        )
        self.role = iam.Role(
            self,
            "WorkflowRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description=f"loraops {props.name}: the fine-tune workflow",
        )
        statements = self._statements(props, key, execution_role_arn, subnets, settings.security_group_ids)
        policy = iam.Policy(self, "WorkflowPolicy", statements=statements)
        policy.attach_to_role(self.role)
        acknowledge_wildcards(policy, statements, WILDCARD_REASONS)

        log_group = encrypted_log_group(self, "WorkflowLogs", props, "finetune-workflow")
        self.state_machine = sfn.StateMachine(
            self,
            "FineTuneWorkflow",
            state_machine_name=f"{props.prefix}-finetune",
            definition_body=sfn.DefinitionBody.from_string(json.dumps(definition(settings))),
            role=self.role,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
            timeout=cdk.Duration.days(6),
        )
        self.state_machine.node.add_dependency(policy)
        ignore_redundant_role_dependency(self.state_machine.node.default_child)
        # CDK adds the log-delivery and X-Ray statements itself, to the role's default policy.
        acknowledge(
            self.role,
            "AwsSolutions-IAM5",
            f"{WILDCARD_REASONS['DeliverLogs']} {WILDCARD_REASONS['Tracing']}",
            "Resource::*",
        )
        published_output(
            self,
            "WorkflowArnParameter",
            "FineTuneWorkflowArn",
            parameter_name=workflow_parameter(props.prefix),
            value=self.state_machine.state_machine_arn,
            description="loraops fine-tune workflow (loraops finetune start)",
        )
        self._alarms(props)

    def _alarms(self, props: WorkflowProps) -> None:
        """A fine-tune that fails or times out notifies the environment's alarm topic."""
        topic = sns.Topic.from_topic_arn(self, "AlarmTopic", alarms.topic_arn(self, props))
        for construct_id, name, metric in (
            ("FailedAlarm", "finetune-failed", self.state_machine.metric_failed),
            ("TimedOutAlarm", "finetune-timed-out", self.state_machine.metric_timed_out),
        ):
            alarms.alarm(
                self,
                construct_id,
                props,
                name,
                "A fine-tune workflow execution failed or timed out (its execution history says where)",
                metric(period=alarms.PERIOD, statistic="Sum"),
                topic,
            )

    def _statements(
        self,
        props: WorkflowProps,
        key: kms.IKey,
        execution_role_arn: str,
        subnets: list[str],
        security_groups: list[str],
    ) -> list[iam.PolicyStatement]:
        def arn(resource: str, name: str) -> str:
            return self.format_arn(service="sagemaker", resource=resource, resource_name=name)

        jobs = arn("training-job", "loraops-*")
        return [
            iam.PolicyStatement(
                sid="FindApprovedBase",
                actions=["sagemaker:DescribeModelPackage"],
                resources=[arn("model-package", f"{props.base_group}/*")],
            ),
            iam.PolicyStatement(sid="ListModelPackages", actions=["sagemaker:ListModelPackages"], resources=["*"]),
            iam.PolicyStatement(
                sid="StartTrainingJobs",
                actions=["sagemaker:CreateTrainingJob"],
                resources=[jobs],
                conditions=sagemaker_policy.training_job_conditions(
                    subnets, security_groups, key.key_arn, list(props.allowed_instance_types)
                ),
            ),
            iam.PolicyStatement(sid="TagTrainingJobs", actions=["sagemaker:AddTags"], resources=[jobs]),
            iam.PolicyStatement(
                sid="WatchTrainingJobs",
                actions=["sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob"],
                resources=[jobs],
            ),
            pass_role_statement("PassExecutionRole", execution_role_arn),
            iam.PolicyStatement(
                sid="GrantArtifactKeyToTrainingJobs",
                actions=["kms:CreateGrant"],
                resources=[key.key_arn],
                conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
            ),
            iam.PolicyStatement(sid="DescribeArtifactKey", actions=["kms:DescribeKey"], resources=[key.key_arn]),
        ]
