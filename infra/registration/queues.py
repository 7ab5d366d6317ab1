"""The registration stack's queues: dead letters (an event or approval given up on) and their alarm."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import alarms
from infra.nag import acknowledge
from infra.props import EnvironmentBasics


def dead_letter_queue(scope: Construct, construct_id: str, key: kms.IKey, fifo: bool = False) -> sqs.Queue:
    """An encrypted queue that keeps what it receives for 14 days."""
    queue = sqs.Queue(
        scope,
        construct_id,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        enforce_ssl=True,
        retention_period=cdk.Duration.days(14),
        fifo=fifo or None,
    )
    acknowledge(queue, "AwsSolutions-SQS3", "This queue is a dead-letter queue itself.")
    return queue


def dead_letter_alarm(
    scope: Construct, construct_id: str, env: EnvironmentBasics, name: str, queue: sqs.IQueue, topic: sns.ITopic
) -> None:
    """Any message waiting in ``queue`` notifies ``topic`` (alarm ``<construct_id>Alarm``, ``<prefix>-<name>``)."""
    alarms.alarm(
        scope,
        f"{construct_id}Alarm",
        env,
        name,
        "An event or approval was given up on and waits in a dead-letter queue: read it, fix the cause, redrive it",
        queue.metric_approximate_number_of_messages_visible(period=alarms.PERIOD, statistic="Maximum"),
        topic,
    )
