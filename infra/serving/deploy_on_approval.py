"""deploy-on-approval: a package state change of a fine-tuned line waits in a FIFO buffer until the function deploys
it (``loraops.deployment``). One message group: one deployment at a time, in the order approved; a failed attempt
(the endpoint still Updating during a blue/green roll of up to about an hour) comes back after the visibility
timeout, for ``APPROVAL_RETRY_WINDOW``, then lands in the approval dead-letter queue.

Deployed in the registration stack (``loraops-<env>-registration``), beside the functions whose ``Shared`` parts
(key, table, alarm topic, dead letters) it uses; its code lives here, beside the serving stack, because it changes
what the endpoint serves. Its resources keep their fixed names and logical ids in the registration stack: moving them
into the serving stack would need two deploys or a ``cdk import``."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs

from infra import alarms, sagemaker_policy
from infra.parts.instances import has_local_nvme
from infra.parts.policies import pass_role_statement, role_arn
from infra.registration import statements
from infra.registration.function import FunctionSpec, Shared, registry_function
from infra.registration.queues import dead_letter_alarm, dead_letter_queue
from loraops import endpoints, s3_layout
from loraops.events import package_state_changed

#: How long an approval is retried (an endpoint stays Updating for up to about an hour during a blue/green roll), and
#: how long each attempt may take before the buffer hands the approval out again (at least the function's timeout).
APPROVAL_RETRY_WINDOW = 6 * 3600
APPROVAL_VISIBILITY_SECONDS = 20 * 60
APPROVAL_VISIBILITY = cdk.Duration.seconds(APPROVAL_VISIBILITY_SECONDS)


@dataclass(frozen=True)
class DeployOnApproval:
    function: lambda_.Function
    buffer: sqs.Queue
    dead_letters: sqs.Queue


def deploy_on_approval(shared: Shared, dead_letters: sqs.IQueue) -> DeployOnApproval:
    """The function, its buffer, the buffer's dead letters, the rule that fills it, and their alarms."""
    stack, props = shared.stack, shared.props
    function = registry_function(
        shared,
        FunctionSpec(
            "deploy-on-approval",
            _statements(shared),
            concurrency=1,  # one deployment at a time: an endpoint takes one update at once
            # hashing a merged 7B model (~13.5 GB) before serving it: Lambda's network bandwidth grows with memory
            timeout=cdk.Duration.minutes(15),
            memory_mb=3008,
            registers=False,
            environment={
                "NAME_PREFIX": props.prefix,
                "SERVING_MODE": props.serving.mode,
                "ENDPOINT_NAME": endpoints.endpoint_name(props.prefix),
                "ROLLBACK_ALARMS": ",".join(endpoints.rollback_alarm_names(props.prefix)),
            },
            dead_letters=dead_letters,
        ),
    )
    approval_dead_letters = dead_letter_queue(stack, "ApprovalDeadLetters", shared.operations_key, fifo=True)
    buffer = sqs.Queue(
        stack,
        "ApprovalBuffer",
        fifo=True,
        content_based_deduplication=True,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=shared.operations_key,
        enforce_ssl=True,
        visibility_timeout=APPROVAL_VISIBILITY,
        retention_period=cdk.Duration.days(4),
        dead_letter_queue=sqs.DeadLetterQueue(
            queue=approval_dead_letters,
            max_receive_count=APPROVAL_RETRY_WINDOW // APPROVAL_VISIBILITY_SECONDS,
        ),
    )
    function.add_event_source(event_sources.SqsEventSource(buffer, batch_size=1))
    pattern = package_state_changed([line.group_name(props.base_model_id) for line in props.fine_tuned_lines])
    events.Rule(
        stack,
        "PackageStateChanged",
        rule_name=alarms.rule_name(props, "package-state-changed"),
        description="A package of a fine-tuned line was approved, rejected or deleted: update the endpoint",
        event_pattern=events.EventPattern(
            source=pattern["source"], detail_type=pattern["detail-type"], detail=pattern["detail"]
        ),
        targets=[
            targets.SqsQueue(
                buffer,
                message_group_id=endpoints.endpoint_name(props.prefix),
                dead_letter_queue=dead_letters,
                retry_attempts=8,
                max_event_age=cdk.Duration.hours(6),
            )
        ],
    )
    dead_letter_alarm(
        stack, "ApprovalDeadLetters", props, "approval-dead-letters", approval_dead_letters, shared.alarm_topic
    )
    alarms.alarm(
        stack,
        "ApprovalWaitingAlarm",
        props,
        "approval-waiting",
        "An approval has waited over 2 hours to be deployed (the endpoint stays busy or deployments fail)",
        buffer.metric_approximate_age_of_oldest_message(period=alarms.PERIOD, statistic="Maximum"),
        shared.alarm_topic,
        threshold=2 * 3600,
    )
    return DeployOnApproval(function, buffer, approval_dead_letters)


def _statements(shared: Shared) -> list[iam.PolicyStatement]:
    """Verify a package's files, create guarded models and endpoint configs, deploy them, record the served model."""
    stack, props, key, placement = shared.stack, shared.props, shared.key, shared.placement
    prefix = props.prefix

    def arn(resource: str, name: str) -> str:
        return stack.format_arn(service="sagemaker", resource=resource, resource_name=name)

    serving_resources = ("model", "endpoint-config", "endpoint", "inference-component")
    return [
        # reads the package's files to verify them against its registered digests before serving
        *statements.read(shared.bucket_arn, "FineTuneVersions", (s3_layout.FINETUNED,)),
        iam.PolicyStatement(
            sid="CreateGuardedModels",
            actions=["sagemaker:CreateModel"],
            resources=[arn("model", f"{prefix}-*")],
            conditions=sagemaker_policy.model_conditions(
                [subnet.subnet_id for subnet in placement.subnets], [placement.security_group.security_group_id]
            ),
        ),
        iam.PolicyStatement(
            sid="CreateGuardedEndpointConfigs",
            actions=["sagemaker:CreateEndpointConfig"],
            resources=[arn("endpoint-config", f"{prefix}-*")],
            conditions=sagemaker_policy.endpoint_config_conditions(
                list(props.allowed_instance_types), None if has_local_nvme(props.serving_instance_type) else key.key_arn
            ),
        ),
        iam.PolicyStatement(
            sid="DeployModels",
            actions=[
                "sagemaker:UpdateEndpoint",
                "sagemaker:DescribeEndpoint",
                "sagemaker:CreateInferenceComponent",
                "sagemaker:UpdateInferenceComponent",
                "sagemaker:DeleteInferenceComponent",
                "sagemaker:DescribeInferenceComponent",
            ],
            resources=[arn(r, f"{prefix}-*") for r in serving_resources],
        ),
        iam.PolicyStatement(
            sid="ReadServingResources",
            actions=["sagemaker:DescribeModel", "sagemaker:DescribeEndpointConfig"],
            resources=[arn("model", "*"), arn("endpoint-config", "*")],
        ),
        pass_role_statement("PassExecutionRole", role_arn(stack, props.execution_role_name)),
        iam.PolicyStatement(
            sid="GrantArtifactKey",  # endpoint configs name the key for capture and volumes
            actions=["kms:CreateGrant"],
            resources=[key.key_arn],
            conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
        ),
        iam.PolicyStatement(sid="DescribeArtifactKey", actions=["kms:DescribeKey"], resources=[key.key_arn]),
        iam.PolicyStatement(
            sid="RecordServedModel",
            actions=["ssm:PutParameter"],
            resources=[
                stack.format_arn(
                    service="ssm",
                    resource="parameter",
                    resource_name=endpoints.served_model_parameter(prefix).lstrip("/"),
                )
            ],
        ),
    ]
