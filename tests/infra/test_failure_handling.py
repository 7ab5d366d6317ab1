"""Failures are handled (issue #21): dead letters can arrive (their keys let EventBridge and the functions write
them), dead letters, function errors and failed fine-tunes alarm to an encrypted topic, and approvals wait in a FIFO
buffer that outlasts an endpoint update."""

from __future__ import annotations

import fnmatch
import json
from types import SimpleNamespace
from typing import Any

import pytest

from loraops.deployment import Deployer
from loraops.endpoints import ServingTarget
from tests.infra.conftest import ENVIRONMENTS


def _resources(template, type_: str) -> dict[str, dict]:
    return template.find_resources(type_)


def _operations_key(template) -> tuple[str, dict]:
    ((logical_id, key),) = [
        (lid, r) for lid, r in _resources(template, "AWS::KMS::Key").items() if lid.startswith("OperationsKey")
    ]
    return logical_id, key


def _key_ref(logical_id: str) -> dict:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_eventbridge_may_write_dead_letters_of_every_rule(env, templates, synthesized):
    """EventBridge encrypts a dead letter with the queue's key as itself: the key policy must let it, for this
    environment's rules (the artifact key let it do nothing, so dead letters could not arrive)."""
    config = synthesized[env].config
    t = templates[(env, "registration")]
    key_id, key = _operations_key(t)
    assert key["Properties"]["EnableKeyRotation"] is True
    grants = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "events.amazonaws.com"}
        and "Condition" in s
        and "ArnLike" in s["Condition"]
    ]
    (grant,) = grants
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= set(grant["Action"])
    assert grant["Condition"]["StringEquals"] == {"aws:SourceAccount": config.account}
    pattern = grant["Condition"]["ArnLike"]["aws:SourceArn"]
    rules = _resources(t, "AWS::Events::Rule").values()
    assert rules
    for rule in rules:
        arn = f"arn:aws:events:{config.region}:{config.account}:rule/{rule['Properties']['Name']}"
        assert fnmatch.fnmatchcase(arn, pattern), arn
        for target in rule["Properties"]["Targets"]:
            dlq = target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
            assert t.to_json()["Resources"][dlq]["Properties"]["KmsMasterKeyId"] == _key_ref(key_id)
    # another account's or environment's rules may not
    assert not fnmatch.fnmatchcase(f"arn:aws:events:{config.region}:{config.account}:rule/other-rule", pattern)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_functions_may_encrypt_their_dead_letters(env, templates):
    """Lambda writes a failed asynchronous event to the function's dead-letter queue with the function's role."""
    t = templates[(env, "registration")]
    key_id, _ = _operations_key(t)
    functions = _resources(t, "AWS::Lambda::Function")
    with_dlq = [lid for lid, f in functions.items() if "DeadLetterConfig" in f["Properties"]]
    assert with_dlq
    policies = _resources(t, "AWS::IAM::Policy")
    for lid in with_dlq:
        role = functions[lid]["Properties"]["Role"]["Fn::GetAtt"][0]
        statements = [
            s
            for p in policies.values()
            if {"Ref": role} in p["Properties"].get("Roles", [])
            for s in p["Properties"]["PolicyDocument"]["Statement"]
        ]
        kms = [s for s in statements if s.get("Resource") == _key_ref(key_id) and "kms:GenerateDataKey" in s["Action"]]
        assert kms, lid


def _alarms(template) -> dict[str, dict]:
    return {
        a["Properties"]["AlarmName"]: a["Properties"] for a in _resources(template, "AWS::CloudWatch::Alarm").values()
    }


def _topic(config) -> str:
    return config.alarm_topic_arn or f"arn:aws:sns:{config.region}:{config.account}:{config.prefix}-alarms"


def _notifies(alarm: dict, topic_arn: str, template) -> bool:
    for action in alarm["AlarmActions"]:
        if action == topic_arn:
            return True
        if isinstance(action, dict) and "Ref" in action:  # the topic created in this stack
            topic = template.to_json()["Resources"][action["Ref"]]["Properties"]
            if topic_arn.endswith(f":{topic['TopicName']}"):
                return True
    return False


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dead_letters_function_errors_and_failed_fine_tunes_alarm(env, templates, synthesized):
    config = synthesized[env].config
    registration, workflow = templates[(env, "registration")], templates[(env, "workflow")]
    found = _alarms(registration)
    queues = {lid: q["Properties"] for lid, q in _resources(registration, "AWS::SQS::Queue").items()}
    dead_letter_queues = {lid for lid, q in queues.items() if lid.startswith(("DeadLetters", "ApprovalDeadLetters"))}
    assert len(dead_letter_queues) == (2 if config.serving else 1)
    for lid in dead_letter_queues:
        (alarm,) = [
            a
            for a in found.values()
            if a["MetricName"] == "ApproximateNumberOfMessagesVisible"
            and a["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [lid, "QueueName"]}}]
        ]
        assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert _notifies(alarm, _topic(config), registration)
    functions = _resources(registration, "AWS::Lambda::Function")
    errors = [a for a in found.values() if a["MetricName"] == "Errors"]
    assert sorted(a["Dimensions"][0]["Value"]["Ref"] for a in errors) == sorted(functions)
    assert all(
        a["Statistic"] == "Sum" and a["Threshold"] == 0 and _notifies(a, _topic(config), registration) for a in errors
    )
    workflow_alarms = _alarms(workflow)
    assert sorted(a["MetricName"] for a in workflow_alarms.values()) == ["ExecutionsFailed", "ExecutionsTimedOut"]
    assert all(_notifies(a, _topic(config), workflow) for a in workflow_alarms.values())


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_alarm_topic_is_created_encrypted_with_its_arn_as_an_output(env, templates, synthesized):
    config = synthesized[env].config
    assert config.alarm_topic_arn is None  # cdk.json names none: the stack creates it
    t = templates[(env, "registration")]
    key_id, key = _operations_key(t)
    (topic,) = _resources(t, "AWS::SNS::Topic").values()
    assert topic["Properties"]["TopicName"] == f"{config.prefix}-alarms"
    assert topic["Properties"]["KmsMasterKeyId"] == _key_ref(key_id)
    cloudwatch = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert cloudwatch and {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(cloudwatch[0]["Action"])
    outputs = t.to_json()["Outputs"]
    (output,) = [o for name, o in outputs.items() if name.startswith("AlarmTopicArn")]
    assert "nothing is subscribed" in output["Description"]


def test_a_configured_topic_is_used_and_an_email_is_subscribed(cdk_context):
    from aws_cdk.assertions import Template

    from infra.app_factory import build_app

    topic = "arn:aws:sns:us-east-1:111111111111:ml-platform-pager"
    cdk_context["loraops:environments"]["dev"]["alarm_topic_arn"] = topic
    cdk_context["env"] = "dev"
    app, (dev,) = build_app(context=cdk_context)
    registration, workflow = Template.from_stack(dev.registration), Template.from_stack(dev.workflow)
    assert registration.find_resources("AWS::SNS::Topic") == {}
    for template in (registration, workflow):
        assert all(a["AlarmActions"] == [topic] for a in _alarms(template).values())
    del cdk_context["loraops:environments"]["dev"]["alarm_topic_arn"]
    cdk_context["loraops:environments"]["dev"]["alarm_email"] = "ml-oncall@example.com"
    app, (dev,) = build_app(context=cdk_context)
    (subscription,) = Template.from_stack(dev.registration).find_resources("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == "ml-oncall@example.com"


# --------------------------------------------------------------------------------------------------- approvals
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_approvals_wait_in_a_fifo_buffer_that_outlasts_an_endpoint_update(env, templates, synthesized):
    """An approval during a blue/green roll (the endpoint Updating for up to about an hour) comes back every
    visibility timeout for 6 hours; Lambda's own asynchronous retries (2, within 3 minutes) did not outlast it."""
    config = synthesized[env].config
    t = templates[(env, "registration")]
    if not config.serving:
        pytest.skip("no serving")
    resources = t.to_json()["Resources"]
    (buffer_id,) = [
        lid for lid in resources if lid.startswith("ApprovalBuffer") and resources[lid]["Type"] == "AWS::SQS::Queue"
    ]
    buffer = resources[buffer_id]["Properties"]
    functions = {f["Properties"]["FunctionName"]: lid for lid, f in _resources(t, "AWS::Lambda::Function").items()}
    deploy_id = functions[f"{config.prefix}-deploy-on-approval"]
    timeout = resources[deploy_id]["Properties"]["Timeout"]
    assert buffer["FifoQueue"] is True and buffer["ContentBasedDeduplication"] is True
    assert buffer["VisibilityTimeout"] >= timeout  # an attempt ends before the approval is handed out again
    window = buffer["VisibilityTimeout"] * buffer["RedrivePolicy"]["maxReceiveCount"]
    assert window >= 6 * 3600 and buffer["MessageRetentionPeriod"] > window
    dead = buffer["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert resources[dead]["Properties"]["FifoQueue"] is True
    (mapping,) = _resources(t, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["Properties"]["EventSourceArn"] == {"Fn::GetAtt": [buffer_id, "Arn"]}
    assert mapping["Properties"]["FunctionName"] == {"Ref": deploy_id} and mapping["Properties"]["BatchSize"] == 1
    (rule,) = [
        r
        for r in _resources(t, "AWS::Events::Rule").values()
        if "Package" in r["Properties"]["EventPattern"]["detail-type"][0]
    ]
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [buffer_id, "Arn"]}
    assert target["SqsParameters"]["MessageGroupId"]  # one group: one deployment at a time, in order
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0 and target["DeadLetterConfig"]["Arn"]
    waiting = [a for a in _alarms(t).values() if a["MetricName"] == "ApproximateAgeOfOldestMessage"]
    assert waiting and waiting[0]["Dimensions"][0]["Value"] == {"Fn::GetAtt": [buffer_id, "QueueName"]}


class _BusyEndpoint:
    """DescribeEndpoint answers Updating; any other call would change something and fails the test."""

    def describe_endpoint(self, EndpointName: str) -> dict:  # noqa: N803 (boto3's parameter name)
        return {"EndpointName": EndpointName, "EndpointStatus": "Updating", "EndpointConfigName": "c"}

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} called while the endpoint is Updating")


@pytest.mark.parametrize("mode", ["endpoint", "inference-components"])
def test_a_merged_approval_during_an_update_changes_nothing_and_fails_retryably(mode):
    from loraops.deployment import EndpointBusy

    deployer = Deployer(SimpleNamespace(sagemaker=_BusyEndpoint(), bucket="b"), None, ServingTarget("p", mode, "p-e"))
    package = SimpleNamespace(group="g", version=2, model_data_prefix="merged/g/j/", arn="arn:p")
    with pytest.raises(EndpointBusy, match="p-e is Updating"):
        deployer._serve_merged(package)


def test_the_handler_takes_approvals_from_the_buffer_and_lets_a_busy_endpoint_fail_the_attempt():
    from demo.functions import load_handler
    from loraops.deployment import EndpointBusy

    function = load_handler("deploy_on_approval")
    event = {"detail-type": "SageMaker Model Package State Change", "detail": {"ModelPackageArn": "arn:p"}}
    (parsed,) = function.events_of({"Records": [{"body": json.dumps(event)}]})
    assert parsed.detail == event["detail"]
    assert function.events_of(event)[0].detail == event["detail"]  # direct invocation still works

    def busy(arn, detail):
        raise EndpointBusy("p-e is Updating")

    with pytest.raises(EndpointBusy):  # not answered as 'refused': the buffer hands the approval out again
        function.deploy(parsed, SimpleNamespace(apply=busy))
