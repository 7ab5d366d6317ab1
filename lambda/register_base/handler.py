"""register-base: register a base model that already lies uncompressed under ``base/<group>/<content hex>/``
(with the ``loraops-base.json`` an import writes) in its base group. A thin door over ``loraops.registry``.

Event: ``{"model_id": "meta-llama/Llama-2-7b-hf", "content_digest": "sha256:<hex>"}`` (the digest of every file
the version serves, which names its folder; import-base returns it).
Environment: ``ARTIFACT_BUCKET``, ``APPROVAL``, ``IDEMPOTENCY_TABLE``, ``AWS_REGION``.
The same bytes again give the existing package; concurrent invocations for one digest register one package
(Powertools idempotency keyed on model id and digest).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.idempotency import idempotent

from loraops.functions import idempotency, logger, required
from loraops.packages import RegistryError
from loraops.registry import Registry

log = logger("register-base")


def register(event: dict[str, Any], registry: Registry) -> dict[str, Any]:
    try:
        model_id, digest = required(event, "model_id", "content_digest")
        package = registry.register_base(model_id, digest)
    except (RegistryError, ValueError) as error:
        log.error("not registered", extra={"reason": str(error)})
        return {"registered": False, "reason": str(error)}
    log.info("registered", extra={"package": package.arn, "version": package.version})
    return {"registered": True, "package_arn": package.arn, "version": package.version, "status": package.status}


@log.inject_lambda_context
@idempotent(**idempotency("[model_id, content_digest]"))
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return register(event, Registry.from_environment())
