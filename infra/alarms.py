"""Operations: the key of the environment's queues and alarm topic, the alarm topic, and the alarms that notify it.

- **Operations key**: encrypts the dead-letter queues, the approval buffer and the alarm topic. Its policy lets
  EventBridge write dead letters for this environment's rules only (``aws:SourceArn``) and CloudWatch publish this
  account's alarms to the topic; functions write their dead letters with their own roles' grants.
- **Alarm topic**: ``alarm_topic_arn`` from ``cdk.json``, or a topic ``loraops-<env>-alarms`` created in the
  registration stack (subscribed to ``alarm_email`` when given; its ARN is a stack output to subscribe to).
- **Alarms**: a dead letter (any message visible), an approval waiting in the buffer, a function error, a failed or
  timed-out workflow execution: each notifies the topic.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.parts.keys import environment_key
from infra.props import Alerting, EnvironmentBasics

#: Alarms fire on the first bad period; a quiet metric (no messages, no invocations) is not a failure.
PERIOD = cdk.Duration.minutes(5)


def rule_name(env: EnvironmentBasics, purpose: str) -> str:
    """EventBridge rule names are fixed so the operations key can name them (``aws:SourceArn``) without a cycle
    (key -> rule -> queue -> key)."""
    return f"{env.prefix}-{purpose}"


def topic_arn(scope: Construct, env: Alerting) -> str:
    """The alarm topic's ARN: the configured one, or the one the registration stack creates."""
    if env.alarm_topic_arn:
        return env.alarm_topic_arn
    return cdk.Stack.of(scope).format_arn(service="sns", resource=f"{env.prefix}-alarms", region=env.region)


def operations_key(scope: Construct, env: EnvironmentBasics) -> kms.Key:
    stack = cdk.Stack.of(scope)
    key = environment_key(scope, "OperationsKey", env, "operations", "dead-letter queues, approval buffer, alarm topic")
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="EventBridgeWritesDeadLettersOfThisEnvironmentsRules",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=["kms:GenerateDataKey", "kms:Decrypt"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={
                "StringEquals": {"aws:SourceAccount": stack.account},
                "ArnLike": {
                    "aws:SourceArn": stack.format_arn(
                        service="events", resource="rule", resource_name=f"{env.prefix}-*"
                    )
                },
            },
        )
    )
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudWatchPublishesThisAccountsAlarms",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:GenerateDataKey*", "kms:Decrypt"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
        )
    )
    return key


def alarm_topic(scope: Construct, env: Alerting, key: kms.IKey) -> sns.ITopic:
    """The configured topic, or a new encrypted one (with its ARN as an output, and ``alarm_email`` subscribed)."""
    if env.alarm_topic_arn:
        return sns.Topic.from_topic_arn(scope, "AlarmTopic", env.alarm_topic_arn)
    topic = sns.Topic(
        scope,
        "AlarmTopic",
        topic_name=f"{env.prefix}-alarms",
        display_name=f"loraops {env.name} alarms",
        master_key=key,
        enforce_ssl=True,
    )
    if env.alarm_email:
        topic.add_subscription(subscriptions.EmailSubscription(env.alarm_email))
    cdk.CfnOutput(
        scope,
        "AlarmTopicArn",
        value=topic.topic_arn,
        description="loraops alarms (dead letters, function errors, failed fine-tunes) publish here"
        + ("" if env.alarm_email else "; nothing is subscribed: set alarm_email or alarm_topic_arn in cdk.json"),
    )
    return topic


def alarm(
    scope: Construct,
    construct_id: str,
    env: EnvironmentBasics,
    name: str,
    description: str,
    metric: cloudwatch.IMetric,
    topic: sns.ITopic,
    threshold: float = 0,
) -> cloudwatch.Alarm:
    """``metric`` above ``threshold`` in one period notifies ``topic``."""
    created = cloudwatch.Alarm(
        scope,
        construct_id,
        alarm_name=f"{env.prefix}-{name}",
        alarm_description=description,
        metric=metric,
        threshold=threshold,
        evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
    created.add_alarm_action(actions.SnsAction(topic))
    return created
