"""Registration: the functions that put models into the registry.

- **register-finetune**: EventBridge ("SageMaker Training Job State Change", Completed, jobs tagged with their
  package group) invokes it; events it cannot take after the retries land in an encrypted dead-letter queue.
- **register-base**: registers a base model already under ``base/`` (invoked by the CLI or the workflow).
- **deploy-on-approval** (where ``serving`` is configured; built by ``infra.serving.deploy_on_approval``): when a
  package of the environment's fine-tuned lines is approved, rejected or deleted, EventBridge puts the event in a FIFO
  approval buffer, from which the function takes it; it adds, updates or removes inference components or rolls the
  endpoint (``loraops.deployment``). Serialised (one message group): one deployment at a time, in order. A failed
  attempt (the endpoint still Updating from a blue/green roll) comes back every 20 minutes for 6 hours, then lands in
  the approval dead-letter queue.

Dead letters, the buffer and the alarm topic use the operations key (``infra/alarms.py``); dead letters, a stuck
approval and function errors alarm.
- **import-base**: copies a base model from another S3 location or the Hugging Face Hub into ``base/`` and
  registers it. It runs outside the VPC: the VPC has no route to the internet by design, and the Hub is there.

- **promote** (where ``promote_from`` is configured): copies an approved package of the source environment into this
  one's bucket inside S3 and registers it (``loraops.promotion``; grants in ``infra.promotion``). Outside the VPC.

They share one DynamoDB table for Powertools idempotency (one package per job, digest or import).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra import alarms, promotion
from infra.props import Placement, removal_policy
from infra.registration import statements
from infra.registration.function import SYNCHRONOUS, FunctionSpec, Shared, registry_function
from infra.registration.props import RegistrationProps
from infra.registration.queues import dead_letter_alarm, dead_letter_queue
from infra.serving.deploy_on_approval import deploy_on_approval
from loraops import s3_layout
from loraops.events import TRAINING_JOB_COMPLETED
from loraops.naming import PROMOTE_FUNCTION


class RegistrationStack(cdk.Stack):
    """The idempotency table, the operations key and alarm topic, the dead letters, the functions and their rules
    (each built by ``infra.registration``)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        props: RegistrationProps,
        key: kms.IKey,
        placement: Placement,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.table = dynamodb.Table(
            self,
            "IdempotencyTable",
            table_name=f"{props.prefix}-registration-idempotency",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            time_to_live_attribute="expiration",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=removal_policy(props),
        )
        # Dead letters, the approval buffer and the alarm topic have a key of their own: EventBridge and CloudWatch
        # may use it, for this environment's rules and this account's alarms only (the artifact key grants neither).
        self.operations_key = alarms.operations_key(self, props)
        self.alarm_topic = alarms.alarm_topic(self, props, self.operations_key)
        self.dead_letters = dead_letter_queue(self, "DeadLetters", self.operations_key)
        dead_letter_alarm(self, "DeadLetters", props, "dead-letters", self.dead_letters, self.alarm_topic)
        shared = Shared(self, props, key, self.operations_key, self.table, placement, self.alarm_topic)
        bucket_arn = shared.bucket_arn

        outputs = (s3_layout.ADAPTERS, s3_layout.MERGED)
        self.register_finetune = registry_function(
            shared,
            FunctionSpec(
                "register-finetune",
                [
                    *statements.read(bucket_arn, "JobOutputs", outputs),
                    *statements.read(bucket_arn, "FineTuneVersions", (s3_layout.FINETUNED,)),
                    iam.PolicyStatement(
                        sid="WriteFineTuneVersions",
                        actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                        resources=[f"{bucket_arn}/{s3_layout.FINETUNED}*"],
                    ),
                    iam.PolicyStatement(
                        sid="DeadLetters", actions=["sqs:SendMessage"], resources=[self.dead_letters.queue_arn]
                    ),
                ],
                dead_letters=self.dead_letters,
            ),
        )
        self.register_base = registry_function(
            shared,
            FunctionSpec(
                "register-base", statements.read(bucket_arn, "BaseModels", (s3_layout.BASE,)), checkov_skips=SYNCHRONOUS
            ),
        )
        self.import_base = registry_function(
            shared,
            FunctionSpec(
                "import-base",
                statements.import_statements(self.partition, bucket_arn, props),
                in_vpc=False,
                timeout=cdk.Duration.minutes(15),
                memory_mb=3008,  # Lambda's network bandwidth grows with its memory
                concurrency=2,
                environment={"HUB_TOKEN_SECRET": _secret_name(props.hub_token_secret_arn)},
                role_name=props.import_base_role_name,  # prod's VPC-only bucket policy exempts it by name
                checkov_skips={
                    **SYNCHRONOUS,
                    "CKV_AWS_117": "Reaches the Hugging Face Hub; the loraops VPC has no route to the internet.",
                },
            ),
        )
        self.promote = (
            registry_function(
                shared,
                FunctionSpec(
                    PROMOTE_FUNCTION,
                    promotion.promote_statements(self, props.promotion),
                    in_vpc=False,
                    timeout=cdk.Duration.minutes(15),
                    memory_mb=3008,  # verifying a merged model reads it: Lambda's bandwidth grows with its memory
                    concurrency=2,
                    environment=promotion.promote_environment(props.promotion),
                    role_name=props.promote_role_name,  # the source's policies and prod's bucket name it
                    checkov_skips={**SYNCHRONOUS, "CKV_AWS_117": promotion.OUTSIDE_VPC},
                ),
            )
            if props.promotion.source
            else None
        )
        deploy = deploy_on_approval(shared, self.dead_letters) if props.serving else None
        self.deploy_on_approval = deploy.function if deploy else None
        self.approval_buffer = deploy.buffer if deploy else None
        self.approval_dead_letters = deploy.dead_letters if deploy else None
        self.rule = events.Rule(
            self,
            "TrainingJobCompleted",
            description="A loraops training job completed: register its output",
            rule_name=alarms.rule_name(props, "training-job-completed"),
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


def _secret_name(arn: str | None) -> str:
    """``arn:...:secret:<name>`` -> ``<name>`` (GetSecretValue takes the name; the ARN lacks its random suffix)."""
    return arn.split(":secret:", 1)[1] if arn else ""
