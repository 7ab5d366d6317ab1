"""register-finetune: when a loraops training job completes, copy its uncompressed output into the write-once
``finetuned/<group>/<content hex>/`` and register that in the Model Registry with its lineage (``loraops.registry``).
A thin door: parse the EventBridge event, call the registry.

Environment: ``ARTIFACT_BUCKET``, ``APPROVAL`` (auto | manual), ``IDEMPOTENCY_TABLE`` (DynamoDB), ``AWS_REGION``.
The same job's event delivered twice, or twice at once, registers one package: Powertools idempotency keyed on
the training job ARN (a second concurrent delivery is refused while the first runs, and gets its result after).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.idempotency import idempotent

from loraops.functions import idempotency, logger
from loraops.naming import TAG_PACKAGE_GROUP
from loraops.packages import RegistryError
from loraops.registry import Registry

log = logger("register-finetune")


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
        log.error("not registered", extra={"job": job, "reason": str(error)})
        return {"registered": False, "job": job, "reason": str(error)}
    log.info("registered", extra={"job": job, "package": package.arn, "version": package.version})
    return {"registered": True, "job": job, "package_arn": package.arn, "version": package.version}


@log.inject_lambda_context
@idempotent(**idempotency("detail.TrainingJobArn"))
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return register(EventBridgeEvent(event), Registry.from_environment())
