"""Registration: the functions that put models into the registry.

- **register-finetune**: EventBridge ("SageMaker Training Job State Change", Completed, jobs tagged with their
  package group) invokes it; events it cannot take after the retries land in an encrypted dead-letter queue.
- **register-base**: registers a base model already under ``base/`` (invoked by the CLI or the workflow).
- **deploy-on-approval** (where ``serving`` is configured): when a package of the environment's fine-tuned lines is
  approved, rejected or deleted, EventBridge puts the event in a FIFO approval buffer, from which the function takes
  it; it adds, updates or removes inference components or rolls the endpoint (``loraops.deployment``). Serialised
  (one message group): one deployment at a time, in order. A failed attempt (the endpoint still Updating from a
  blue/green roll) comes back every 20 minutes for 6 hours, then lands in the approval dead-letter queue.

Dead letters, the buffer and the alarm topic use the operations key (``infra/alarms.py``); dead letters, a stuck
approval and function errors alarm.
- **import-base**: copies a base model from another S3 location or the Hugging Face Hub into ``base/`` and
  registers it. It runs outside the VPC: the VPC has no route to the internet by design, and the Hub is there.

- **promote** (where ``promote_from`` is configured): copies an approved package of the source environment into this
  one's bucket inside S3 and registers it (``loraops.promotion``; grants in ``infra.promotion``). Outside the VPC.

They share one DynamoDB table for Powertools idempotency (one package per job, digest or import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import alarms, execution_role, promotion
from infra.config import EnvironmentConfig
from infra.functions import function_code
from infra.logs import encrypted_log_group
from infra.nag import acknowledge, ignore_redundant_role_dependency, skip_checkov
from infra.stacks.network import Placement
from infra.stacks.serving import has_local_nvme
from infra.stacks.storage import removal_policy
from loraops import endpoints, s3_layout
from loraops.events import TRAINING_JOB_COMPLETED, package_state_changed

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
#: How long an approval is retried (an endpoint stays Updating for up to about an hour during a blue/green roll), and
#: how long each attempt may take before the buffer hands the approval out again (at least the function's timeout).
APPROVAL_RETRY_WINDOW = 6 * 3600
APPROVAL_VISIBILITY_SECONDS = 20 * 60
APPROVAL_VISIBILITY = cdk.Duration.seconds(APPROVAL_VISIBILITY_SECONDS)
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
        self.config, self.key, self.placement = config, key, placement
        # Dead letters, the approval buffer and the alarm topic have a key of their own: EventBridge and CloudWatch
        # may use it, for this environment's rules and this account's alarms only (the artifact key grants neither).
        self.operations_key = alarms.operations_key(self, config)
        self.alarm_topic = alarms.alarm_topic(self, config, self.operations_key)
        self.dead_letters = self._dead_letter_queue("DeadLetters")
        self.bucket_arn = f"arn:{self.partition}:s3:::{config.artifact_bucket_name}"

        outputs = (s3_layout.ADAPTERS, s3_layout.MERGED)
        self.register_finetune = self._function(
            FunctionSpec(
                "register-finetune",
                [
                    *self._read("JobOutputs", outputs),
                    *self._read("FineTuneVersions", (s3_layout.FINETUNED,)),
                    iam.PolicyStatement(
                        sid="WriteFineTuneVersions",
                        actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                        resources=[f"{self.bucket_arn}/{s3_layout.FINETUNED}*"],
                    ),
                    iam.PolicyStatement(
                        sid="DeadLetters", actions=["sqs:SendMessage"], resources=[self.dead_letters.queue_arn]
                    ),
                ],
                dead_letters=self.dead_letters,
            )
        )
        self.register_base = self._function(
            FunctionSpec("register-base", self._read("BaseModels", (s3_layout.BASE,)), checkov_skips=SYNCHRONOUS)
        )
        self.import_base = self._function(
            FunctionSpec(
                "import-base",
                self._import_statements(),
                in_vpc=False,
                timeout=cdk.Duration.minutes(15),
                memory_mb=3008,  # Lambda's network bandwidth grows with its memory
                concurrency=2,
                environment={"HUB_TOKEN_SECRET": _secret_name(config.hub_token_secret_arn)},
                role_name=config.import_base_role_name,  # prod's VPC-only bucket policy exempts it by name
                checkov_skips={
                    **SYNCHRONOUS,
                    "CKV_AWS_117": "Reaches the Hugging Face Hub; the loraops VPC has no route to the internet.",
                },
            )
        )
        self.promote = (
            self._function(
                FunctionSpec(
                    "promote",
                    promotion.promote_statements(self, config),
                    in_vpc=False,
                    timeout=cdk.Duration.minutes(15),
                    memory_mb=3008,  # verifying a merged model reads it: Lambda's bandwidth grows with its memory
                    concurrency=2,
                    environment=promotion.promote_environment(config),
                    role_name=config.promote_role_name,  # the source's policies and prod's bucket name it
                    checkov_skips={**SYNCHRONOUS, "CKV_AWS_117": promotion.OUTSIDE_VPC},
                )
            )
            if config.promotion_source
            else None
        )
        self.approval_buffer: sqs.Queue | None = None
        self.approval_dead_letters: sqs.Queue | None = None
        self.deploy_on_approval = self._deploy_function() if config.serving else None
        self.rule = events.Rule(
            self,
            "TrainingJobCompleted",
            description="A loraops training job completed: register its output",
            rule_name=alarms.rule_name(config, "training-job-completed"),
            event_pattern=events.EventPattern(
                source=TRAINING_JOB_COMPLETED["source"],
                detail_type=TRAINING_JOB_COMPLETED["detail-type"],
                detail=TRAINING_JOB_COMPLETED["detail"],
            ),
            targets=[
                targets.LambdaFunction(
                    self.register_finetune,
                    dead_letter_queue=self.dead_letters,
                    retry_attempts=8,
                    max_event_age=cdk.Duration.hours(6),
                )
            ],
        )
        self._alarms()

    def _dead_letter_queue(self, construct_id: str, fifo: bool = False) -> sqs.Queue:
        queue = sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.operations_key,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(14),
            fifo=fifo or None,
        )
        acknowledge(queue, "AwsSolutions-SQS3", "This queue is a dead-letter queue itself.")
        return queue

    def _alarms(self) -> None:
        """Dead letters, function errors and a stuck approval notify the alarm topic."""
        config, topic = self.config, self.alarm_topic
        queues = [("DeadLetters", "dead-letters", self.dead_letters)]
        if self.approval_dead_letters is not None:
            queues.append(("ApprovalDeadLetters", "approval-dead-letters", self.approval_dead_letters))
        for construct_id, name, queue in queues:
            alarms.alarm(
                self,
                f"{construct_id}Alarm",
                config,
                name,
                "An event or approval was given up on and waits in a dead-letter queue: read it, fix the cause, "
                "redrive it",
                queue.metric_approximate_number_of_messages_visible(period=alarms.PERIOD, statistic="Maximum"),
                topic,
            )
        if self.approval_buffer is not None:
            alarms.alarm(
                self,
                "ApprovalWaitingAlarm",
                config,
                "approval-waiting",
                "An approval has waited over 2 hours to be deployed (the endpoint stays busy or deployments fail)",
                self.approval_buffer.metric_approximate_age_of_oldest_message(
                    period=alarms.PERIOD, statistic="Maximum"
                ),
                topic,
                threshold=2 * 3600,
            )
        functions = [self.register_finetune, self.register_base, self.import_base]
        functions += [self.deploy_on_approval] if self.deploy_on_approval is not None else []
        functions += [self.promote] if self.promote is not None else []
        for function in functions:
            construct_id = function.node.id
            alarms.alarm(
                self,
                f"{construct_id}ErrorsAlarm",
                config,
                f"{re.sub(r'(?<!^)(?=[A-Z])', '-', construct_id).lower()}-errors",
                f"The {construct_id} function failed (see its log group)",
                function.metric_errors(period=alarms.PERIOD, statistic="Sum"),
                topic,
            )

    def _function(self, spec: FunctionSpec) -> lambda_.Function:
        """The function of ``spec`` with its own role, encrypted log group and reasoned policy."""
        config = self.config
        name = f"{config.prefix}-{spec.name}"
        construct = "".join(part.title() for part in spec.name.split("-"))
        log_group = encrypted_log_group(self, f"{construct}Logs", config, spec.name, f"/aws/lambda/{name}")
        role = iam.Role(
            self,
            f"{construct}Role",
            role_name=spec.role_name,
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"loraops {config.name}: the {spec.name} function",
        )
        statements = [*spec.statements, *self._common_statements(name, spec)]
        policy = iam.Policy(self, f"{construct}Policy", statements=statements)
        policy.attach_to_role(role)
        for finding, reason in execution_role.wildcard_findings(statements, WILDCARD_REASONS):
            acknowledge(policy, "AwsSolutions-IAM5", reason, finding)
        network = (
            dict(
                vpc=self.placement.vpc,
                vpc_subnets=ec2.SubnetSelection(subnets=self.placement.subnets),
                security_groups=[self.placement.security_group],
            )
            if spec.in_vpc
            else {}
        )
        function = lambda_.Function(
            self,
            construct,
            function_name=name,
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=function_code(spec.name.replace("-", "_")),
            role=role,
            timeout=spec.timeout,
            memory_size=spec.memory_mb,
            environment={
                "ARTIFACT_BUCKET": config.artifact_bucket_name,
                "APPROVAL": config.approval,
                "IDEMPOTENCY_TABLE": self.table.table_name,
                "POWERTOOLS_SERVICE_NAME": f"loraops-{spec.name}",
                **{k: v for k, v in spec.environment.items() if v},
            },
            environment_encryption=self.key,
            reserved_concurrent_executions=spec.concurrency,
            dead_letter_queue=spec.dead_letters,
            log_group=log_group,
            **network,
        )
        function.node.add_dependency(policy)
        ignore_redundant_role_dependency(function.node.default_child)
        if spec.checkov_skips:
            skip_checkov(function.node.default_child, spec.checkov_skips)
        return function

    def _read(self, what: str, prefixes: tuple[str, ...]) -> list[iam.PolicyStatement]:
        """GetObject under ``prefixes`` of the artifact bucket and ListBucket limited to them."""
        return [
            iam.PolicyStatement(
                sid=f"Read{what}", actions=["s3:GetObject"], resources=[f"{self.bucket_arn}/{p}*" for p in prefixes]
            ),
            iam.PolicyStatement(
                sid=f"List{what}",
                actions=["s3:ListBucket"],
                resources=[self.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            ),
        ]

    def _import_statements(self) -> list[iam.PolicyStatement]:
        config = self.config
        prefixes = (s3_layout.BASE, s3_layout.STAGING)
        statements = [
            # Writes under base/ are conditional (write-once, enforced by the bucket policy) and never deleted;
            # staged bytes are removed once written.
            iam.PolicyStatement(
                sid="WriteBaseModels",
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[f"{self.bucket_arn}/{s3_layout.BASE}*", f"{self.bucket_arn}/{s3_layout.STAGING}base/*"],
            ),
            iam.PolicyStatement(
                sid="RemoveStagedBytes",
                actions=["s3:DeleteObject"],
                resources=[f"{self.bucket_arn}/{s3_layout.STAGING}base/*"],
            ),
            iam.PolicyStatement(
                sid="ListImportPrefixes",
                actions=["s3:ListBucket"],
                resources=[self.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            ),
        ]
        if config.base_import_sources:
            sources = [s3_layout.split_s3_uri(uri) for uri in config.base_import_sources]
            statements += [
                iam.PolicyStatement(
                    sid="ReadImportSources",
                    actions=["s3:GetObject"],
                    resources=[f"arn:{self.partition}:s3:::{b}/{k}*" for b, k in sources],
                ),
                iam.PolicyStatement(
                    sid="ListImportSources",
                    actions=["s3:ListBucket"],
                    resources=sorted({f"arn:{self.partition}:s3:::{b}" for b, _ in sources}),
                    conditions={"StringLike": {"s3:prefix": [f"{k}*" for _, k in sources]}},
                ),
            ]
        if config.hub_token_secret_arn:
            statements.append(
                iam.PolicyStatement(
                    sid="ReadHubToken",
                    actions=["secretsmanager:GetSecretValue"],
                    resources=[f"{config.hub_token_secret_arn}-??????"],
                )
            )
        return statements

    def _deploy_function(self) -> lambda_.Function:
        """deploy-on-approval, invoked by package state changes of the environment's fine-tuned lines."""
        config = self.config
        prefix = config.prefix

        def arn(resource: str, name: str) -> str:
            return self.format_arn(service="sagemaker", resource=resource, resource_name=name)

        serving_resources = ("model", "endpoint-config", "endpoint", "inference-component")
        function = self._function(
            FunctionSpec(
                "deploy-on-approval",
                [
                    # reads the package's files to verify them against its registered digests before serving
                    *self._read("FineTuneVersions", (s3_layout.FINETUNED,)),
                    iam.PolicyStatement(
                        sid="CreateGuardedModels",
                        actions=["sagemaker:CreateModel"],
                        resources=[arn("model", f"{prefix}-*")],
                        conditions=execution_role.model_conditions(
                            [subnet.subnet_id for subnet in self.placement.subnets],
                            [self.placement.security_group.security_group_id],
                        ),
                    ),
                    iam.PolicyStatement(
                        sid="CreateGuardedEndpointConfigs",
                        actions=["sagemaker:CreateEndpointConfig"],
                        resources=[arn("endpoint-config", f"{prefix}-*")],
                        conditions=execution_role.endpoint_config_conditions(
                            config.allowed_instance_types,
                            None if has_local_nvme(config.serving_instance_type) else self.key.key_arn,
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
                    iam.PolicyStatement(
                        sid="PassExecutionRole",
                        actions=["iam:PassRole"],
                        resources=[
                            self.format_arn(
                                service="iam", region="", resource="role", resource_name=config.execution_role_name
                            )
                        ],
                        conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
                    ),
                    iam.PolicyStatement(
                        sid="GrantArtifactKey",  # endpoint configs name the key for capture and volumes
                        actions=["kms:CreateGrant"],
                        resources=[self.key.key_arn],
                        conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
                    ),
                    iam.PolicyStatement(
                        sid="DescribeArtifactKey", actions=["kms:DescribeKey"], resources=[self.key.key_arn]
                    ),
                    iam.PolicyStatement(
                        sid="RecordServedModel",
                        actions=["ssm:PutParameter"],
                        resources=[
                            self.format_arn(
                                service="ssm",
                                resource="parameter",
                                resource_name=endpoints.served_model_parameter(prefix).lstrip("/"),
                            )
                        ],
                    ),
                ],
                concurrency=1,  # one deployment at a time: an endpoint takes one update at once
                # hashing a merged 7B model (~13.5 GB) before serving it: Lambda's network bandwidth grows with memory
                timeout=cdk.Duration.minutes(15),
                memory_mb=3008,
                registers=False,
                environment={
                    "NAME_PREFIX": prefix,
                    "SERVING_MODE": config.serving.mode,
                    "ENDPOINT_NAME": endpoints.endpoint_name(prefix),
                    "ROLLBACK_ALARMS": ",".join(endpoints.rollback_alarm_names(prefix)),
                },
                dead_letters=self.dead_letters,
            )
        )
        # Approvals wait in a FIFO buffer until the endpoint takes them: one message group, so one deployment at a
        # time and in the order approved; a failed attempt (the endpoint still Updating during a blue/green roll of
        # up to about an hour) comes back after the visibility timeout, for APPROVAL_RETRY_WINDOW.
        self.approval_dead_letters = self._dead_letter_queue("ApprovalDeadLetters", fifo=True)
        self.approval_buffer = sqs.Queue(
            self,
            "ApprovalBuffer",
            fifo=True,
            content_based_deduplication=True,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.operations_key,
            enforce_ssl=True,
            visibility_timeout=APPROVAL_VISIBILITY,
            retention_period=cdk.Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.approval_dead_letters,
                max_receive_count=APPROVAL_RETRY_WINDOW // APPROVAL_VISIBILITY_SECONDS,
            ),
        )
        function.add_event_source(event_sources.SqsEventSource(self.approval_buffer, batch_size=1))
        lines = [line.group_name(config.base_model_id) for line in config.fine_tuned_lines]
        pattern = package_state_changed(lines)
        events.Rule(
            self,
            "PackageStateChanged",
            rule_name=alarms.rule_name(config, "package-state-changed"),
            description="A package of a fine-tuned line was approved, rejected or deleted: update the endpoint",
            event_pattern=events.EventPattern(
                source=pattern["source"], detail_type=pattern["detail-type"], detail=pattern["detail"]
            ),
            targets=[
                targets.SqsQueue(
                    self.approval_buffer,
                    message_group_id=endpoints.endpoint_name(prefix),
                    dead_letter_queue=self.dead_letters,
                    retry_attempts=8,
                    max_event_age=cdk.Duration.hours(6),
                )
            ],
        )
        return function

    def _common_statements(self, function_name: str, spec: FunctionSpec) -> list[iam.PolicyStatement]:
        """What every registry function needs: the key, packages, the idempotency table, its logs (and the VPC)."""

        def arn(service: str, resource: str, name: str = "*") -> str:
            return self.format_arn(service=service, resource=resource, resource_name=name)

        statements = [
            iam.PolicyStatement(
                sid="UseArtifactKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[self.key.key_arn]
            ),
        ]
        if not spec.registers:
            statements.append(
                iam.PolicyStatement(
                    sid="ReadPackages",
                    actions=["sagemaker:DescribeModelPackage", "sagemaker:ListModelPackages"],
                    resources=[arn("sagemaker", "model-package"), arn("sagemaker", "model-package-group")],
                )
            )
        else:
            statements += self._registering_statements(arn)
        statements.append(
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
            )
        )
        if spec.dead_letters is not None:
            statements.append(
                iam.PolicyStatement(
                    sid="EncryptDeadLetters",  # Lambda writes a failed asynchronous event with the function's role
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    resources=[self.operations_key.key_arn],
                )
            )
        if spec.in_vpc:
            statements += self._network_statements(arn)
        return statements

    def _registering_statements(self, arn) -> list[iam.PolicyStatement]:
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
            *execution_role.approval_statements(manual_approval=not self.config.auto_approve),
            iam.PolicyStatement(
                sid="RegistrationClaims",
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[f"{self.bucket_arn}/{s3_layout.REGISTRATIONS}*"],
            ),
            iam.PolicyStatement(
                sid="ReadEnvironmentTag",  # the registry checks a group's environment against the bucket's tag
                actions=["s3:GetBucketTagging"],
                resources=[self.bucket_arn],
            ),
            iam.PolicyStatement(
                sid="IdempotencyRecords",
                actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
                resources=[self.table.table_arn],
            ),
        ]

    def _network_statements(self, arn) -> list[iam.PolicyStatement]:
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
                conditions={"ArnEquals": {"ec2:Vpc": self.placement.vpc_arn}},
            ),
            iam.PolicyStatement(sid="DescribeNetwork", actions=["ec2:DescribeNetworkInterfaces"], resources=["*"]),
        ]


def _secret_name(arn: str | None) -> str:
    """``arn:...:secret:<name>`` -> ``<name>`` (GetSecretValue takes the name; the ARN lacks its random suffix)."""
    return arn.split(":secret:", 1)[1] if arn else ""
