"""One registration function: its own role and reasoned policy, encrypted log group, dead letters and error alarm."""

from __future__ import annotations

from dataclasses import dataclass, field

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs

from infra import alarms
from infra.functions import function_code
from infra.logs import encrypted_log_group
from infra.nag import acknowledge_wildcards, ignore_redundant_role_dependency, skip_checkov
from infra.props import Placement
from infra.registration import statements
from infra.registration.props import RegistrationProps

#: Why the functions that callers invoke directly have no dead-letter queue.
SYNCHRONOUS = {
    "CKV_AWS_116": "Invoked synchronously (the CLI, the workflow): the caller receives the error; a DLQ would "
    "hold nothing."
}


@dataclass
class FunctionSpec:
    """One registry function: its folder under lambda/, its own statements, and how it runs."""

    name: str
    statements: list[iam.PolicyStatement]
    in_vpc: bool = True
    timeout: cdk.Duration = field(default_factory=lambda: cdk.Duration.minutes(5))
    memory_mb: int = 512
    concurrency: int = 5
    environment: dict[str, str] = field(default_factory=dict)
    dead_letters: sqs.IQueue | None = None
    registers: bool = True  # creates packages (and keeps idempotency records); False: reads packages only
    checkov_skips: dict[str, str] = field(default_factory=dict)
    role_name: str | None = None  # fixed where a bucket or key policy names the role


@dataclass(frozen=True)
class Shared:
    """What every registration function of one stack uses: the artifact key, the operations key (dead letters),
    the idempotency table, the VPC placement and the alarm topic."""

    stack: cdk.Stack
    props: RegistrationProps
    key: kms.IKey
    operations_key: kms.IKey
    table: dynamodb.ITable
    placement: Placement
    alarm_topic: sns.ITopic

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.stack.partition}:s3:::{self.props.artifact_bucket_name}"


def registry_function(shared: Shared, spec: FunctionSpec) -> lambda_.Function:
    """The function of ``spec`` in ``shared.stack`` (ids ``<Name>``, ``<Name>Role``, ``<Name>Policy``,
    ``<Name>Logs``, ``<Name>ErrorsAlarm``)."""
    stack, props = shared.stack, shared.props
    name = f"{props.prefix}-{spec.name}"
    construct = "".join(part.title() for part in spec.name.split("-"))
    log_group = encrypted_log_group(stack, f"{construct}Logs", props, spec.name, f"/aws/lambda/{name}")
    role = iam.Role(
        stack,
        f"{construct}Role",
        role_name=spec.role_name,
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"loraops {props.name}: the {spec.name} function",
    )
    granted = [*spec.statements, *_common_statements(shared, name, spec)]
    policy = iam.Policy(stack, f"{construct}Policy", statements=granted)
    policy.attach_to_role(role)
    acknowledge_wildcards(policy, granted, statements.WILDCARD_REASONS)
    placement = shared.placement
    network = (
        dict(
            vpc=placement.vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=placement.subnets),
            security_groups=[placement.security_group],
        )
        if spec.in_vpc
        else {}
    )
    function = lambda_.Function(
        stack,
        construct,
        function_name=name,
        runtime=lambda_.Runtime.PYTHON_3_14,
        handler="handler.handler",
        code=function_code(spec.name.replace("-", "_")),
        role=role,
        timeout=spec.timeout,
        memory_size=spec.memory_mb,
        environment={
            "ARTIFACT_BUCKET": props.artifact_bucket_name,
            "APPROVAL": props.approval,
            "IDEMPOTENCY_TABLE": shared.table.table_name,
            "POWERTOOLS_SERVICE_NAME": f"loraops-{spec.name}",
            **{k: v for k, v in spec.environment.items() if v},
        },
        environment_encryption=shared.key,
        reserved_concurrent_executions=spec.concurrency,
        dead_letter_queue=spec.dead_letters,
        log_group=log_group,
        **network,
    )
    function.node.add_dependency(policy)
    ignore_redundant_role_dependency(function.node.default_child)
    if spec.checkov_skips:
        skip_checkov(function.node.default_child, spec.checkov_skips)
    alarms.alarm(
        stack,
        f"{construct}ErrorsAlarm",
        props,
        f"{spec.name}-errors",
        f"The {construct} function failed (see its log group)",
        function.metric_errors(period=alarms.PERIOD, statistic="Sum"),
        shared.alarm_topic,
    )
    return function


def _common_statements(shared: Shared, function_name: str, spec: FunctionSpec) -> list[iam.PolicyStatement]:
    """What every registry function needs: the key, packages, the idempotency table, its logs (and the VPC)."""
    arn = statements.arn_of(shared.stack)
    granted = [
        iam.PolicyStatement(
            sid="UseArtifactKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[shared.key.key_arn]
        ),
    ]
    if not spec.registers:
        granted.append(statements.reading_packages(arn))
    else:
        granted += statements.registering(
            arn, shared.bucket_arn, shared.table.table_arn, manual_approval=not shared.props.auto_approve
        )
    granted.append(statements.write_logs(shared.stack, function_name))
    if spec.dead_letters is not None:
        granted.append(
            iam.PolicyStatement(
                sid="EncryptDeadLetters",  # Lambda writes a failed asynchronous event with the function's role
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[shared.operations_key.key_arn],
            )
        )
    if spec.in_vpc:
        granted += statements.network(arn, shared.placement.vpc_arn)
    return granted
