"""register-finetune: when a loraops training job completes, register its uncompressed output in the Model
Registry with its lineage (``loraops.registry``). A thin door: parse the EventBridge event, call the registry.

Environment: ``ARTIFACT_BUCKET``, ``APPROVAL`` (auto | manual), ``IDEMPOTENCY_TABLE`` (DynamoDB), ``AWS_REGION``.
The same job's event delivered twice, or twice at once, registers one package: Powertools idempotency keyed on
the training job ARN (a second concurrent delivery is refused while the first runs, and gets its result after).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig, idempotent

from loraops.naming import TAG_PACKAGE_GROUP
from loraops.registry import Registry, RegistryError

logger = Logger(service="loraops-register-finetune")
persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
idempotency = IdempotencyConfig(
    event_key_jmespath="detail.TrainingJobArn", raise_on_no_idempotency_key=True, expires_after_seconds=7 * 24 * 3600
)


def registry_from_environment() -> Registry:
    region = os.environ["AWS_REGION"]
    return Registry(
        boto3.client("sagemaker", region_name=region),
        boto3.client("s3", region_name=region),
        os.environ["ARTIFACT_BUCKET"],
        region,
        os.environ.get("APPROVAL", "manual"),
    )


def register(event: EventBridgeEvent, registry: Registry) -> dict[str, Any]:
    """Register a completed job's output; anything else (another status, a refused output) registers nothing."""
    detail = event.detail
    job, status = detail["TrainingJobName"], detail["TrainingJobStatus"]
    if status != "Completed":
        return {"registered": False, "job": job, "reason": f"training job {status}"}
    group = (detail.get("Tags") or {}).get(TAG_PACKAGE_GROUP)
    uri = detail.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    try:
        if not group:
            raise RegistryError(f"training job {job} has no {TAG_PACKAGE_GROUP} tag")
        if bucket != registry.bucket:
            raise RegistryError(f"training job {job} wrote to {uri}, not to the artifact bucket {registry.bucket}")
        package = registry.register_finetune(group, prefix if prefix.endswith("/") else prefix + "/", job)
    except RegistryError as error:
        logger.error("not registered", extra={"job": job, "reason": str(error)})
        return {"registered": False, "job": job, "reason": str(error)}
    logger.info("registered", extra={"job": job, "package": package.arn, "version": package.version})
    return {"registered": True, "job": job, "package_arn": package.arn, "version": package.version}


@logger.inject_lambda_context
@idempotent(config=idempotency, persistence_store=persistence)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return register(EventBridgeEvent(event), registry_from_environment())
