"""import-base: copy a base model into ``base/<group>/<content hex>/`` uncompressed, from another S3 location or
the Hugging Face Hub, and register it (``loraops.base_import``): the samples' first step, made repeatable.

Event: ``{"source": "s3://bucket/prefix/" | "hf://<org>/<model>", "model_id": "<org>/<model>",
"revision": "main", "licence": "<the licence accepted for the weights>"}`` (``revision``: Hub only).
Environment: ``ARTIFACT_BUCKET``, ``APPROVAL``, ``IDEMPOTENCY_TABLE``, ``AWS_REGION``, and ``HUB_TOKEN_SECRET``
(a Secrets Manager secret holding a Hub token; needed for gated models such as Llama-2).
Progress (bytes per file) is logged every 512 MB. One import per source, revision and model id at a time.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.idempotency import idempotent

from loraops.base_import import import_base
from loraops.base_sources import source_from
from loraops.functions import idempotency, logger, required
from loraops.naming import Metadata
from loraops.packages import RegistryError
from loraops.registry import Registry

log = logger("import-base")
LOG_EVERY = 512 * 1024 * 1024


def hub_token() -> str:
    secret = os.environ.get("HUB_TOKEN_SECRET")
    if not secret:
        return ""
    return boto3.client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"].strip()


def run_import(event: dict[str, Any], registry: Registry, token: str = "") -> dict[str, Any]:
    read: dict[str, int] = {}

    def progress(name: str, n: int) -> None:
        before = read.get(name, 0)
        read[name] = before + n
        if read[name] // LOG_EVERY > before // LOG_EVERY:
            log.info("importing", extra={"file": name, "bytes": read[name]})

    try:
        location, model_id = required(event, "source", "model_id")
        source = source_from(location, registry.s3, revision=event.get("revision") or "main", token=token)
        package = import_base(registry, source, model_id, licence=event.get("licence") or "", progress=progress)
    except (RegistryError, ValueError) as error:
        log.error("not imported", extra={"reason": str(error)})
        return {"imported": False, "reason": str(error)}
    log.info("imported", extra={"package": package.arn, "bytes": sum(read.values())})
    return {
        "imported": True,
        "package_arn": package.arn,
        "version": package.version,
        "status": package.status,
        "content_digest": package.metadata.get(Metadata.CONTENT_DIGEST, ""),
        "weights_digest": package.metadata.get(Metadata.WEIGHTS_DIGEST, ""),
    }


@log.inject_lambda_context
@idempotent(**idempotency("[source, revision, model_id]", expires_after_seconds=3600))
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    location = str(event.get("source", ""))
    return run_import(event, Registry.from_environment(), hub_token() if location.startswith("hf://") else "")
