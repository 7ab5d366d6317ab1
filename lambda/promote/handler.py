"""promote: copy an approved package of the source environment (staging) into this one (prod) inside S3 and register
it with its lineage (``loraops.promotion``). Invoked synchronously by ``loraops models promote``.

Event: ``{"package_arn": "arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>"}``.
Environment: ``ARTIFACT_BUCKET``, ``APPROVAL``, ``AWS_REGION`` (this environment's registry), and
``SOURCE_ENVIRONMENT``, ``SOURCE_ACCOUNT``, ``SOURCE_REGION``, ``SOURCE_BUCKET`` (where promotions come from).
It runs outside the VPC: the source's registry and bucket may be in another region, which a gateway endpoint does not
reach; prod's bucket policy admits this function's role by name. Promoting a package twice, or twice at once, gives one
package (the registry's lookup and claim).
"""

from __future__ import annotations

import os
from typing import Any

import boto3

from loraops.functions import logger, required
from loraops.naming import Metadata
from loraops.packages import RegistryError
from loraops.promotion import Promotion, SourceEnvironment
from loraops.registry import Registry

log = logger("promote")


def source_registry() -> tuple[Registry, SourceEnvironment]:
    region = os.environ["SOURCE_REGION"]
    origin = SourceEnvironment(os.environ["SOURCE_ENVIRONMENT"], os.environ["SOURCE_ACCOUNT"], region)
    clients = (boto3.client("sagemaker", region_name=region), boto3.client("s3", region_name=region))
    return Registry(*clients, os.environ["SOURCE_BUCKET"], region), origin


def run(event: dict[str, Any], promotion: Promotion) -> dict[str, Any]:
    try:
        (package_arn,) = required(event, "package_arn")
        package = promotion.promote(package_arn)
    except (RegistryError, ValueError) as error:
        log.error("not promoted", extra={"reason": str(error)})
        return {"promoted": False, "reason": str(error)}
    log.info("promoted", extra={"package": package.arn, "source": package.metadata.get(Metadata.SOURCE_PACKAGE_ARN)})
    return {
        "promoted": True,
        "package_arn": package.arn,
        "version": package.version,
        "status": package.status,
        "source_package_arn": package.metadata.get(Metadata.SOURCE_PACKAGE_ARN, ""),
        "source_environment": package.metadata.get(Metadata.SOURCE_ENVIRONMENT, ""),
        "content_digest": package.metadata.get(Metadata.CONTENT_DIGEST, ""),
    }


@log.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    source, origin = source_registry()
    return run(event, Promotion(source, Registry.from_environment(), origin))
