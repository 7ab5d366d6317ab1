"""deploy-on-approval: when a package of this environment is approved, rejected or deleted, bring the endpoint in
line with it (``loraops.deployment``). A thin door: parse the EventBridge event, call the deployer.

Environment: ``ARTIFACT_BUCKET``, ``AWS_REGION``, ``NAME_PREFIX``, ``SERVING_MODE``, ``ENDPOINT_NAME``,
``ROLLBACK_ALARMS``. Deployments are serialised (reserved concurrency 1) and idempotent by construction: each one
compares what the endpoint serves with the package's current state, so a repeated event changes nothing. A package
that cannot be served (an adapter of other base weights, files changed since registration, a package an earlier
loraops registered, which ``loraops models migrate`` fixes) is answered with the reason and changes nothing; AWS
errors and an endpoint not InService (still updating) raise, and the approval buffer (an SQS FIFO queue) hands the
event out again.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

from loraops.deployment import Deployer, DeploymentError
from loraops.endpoints import ServingTarget
from loraops.functions import logger
from loraops.registry import Registry

log = logger("deploy-on-approval")


def deploy(event: EventBridgeEvent, deployer: Deployer) -> dict[str, Any]:
    arn = event.detail.get("ModelPackageArn", "")
    try:
        result = deployer.apply(arn, event.detail)
    except DeploymentError as error:
        log.error("not deployed", extra={"package": arn, "reason": str(error)})
        return {"package": arn, "action": "refused", "detail": str(error)}
    log.info("deployment", extra=result)
    return result


def events_of(event: dict[str, Any]) -> list[EventBridgeEvent]:
    """The EventBridge events of an invocation: one from the approval buffer's SQS records (the event is each
    record's body), or the event itself when EventBridge or an operator invokes the function directly."""
    if "Records" in event:
        return [EventBridgeEvent(json.loads(record["body"])) for record in event["Records"]]
    return [EventBridgeEvent(event)]


@log.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """An error raised here (an AWS error, the endpoint not InService) fails the invocation: the buffer hands the
    approval out again later."""
    registry = Registry.from_environment()
    deployer = Deployer(registry, boto3.client("ssm", region_name=registry.region), ServingTarget.from_environment())
    results = [deploy(item, deployer) for item in events_of(event)]
    return results if "Records" in event else results[0]
