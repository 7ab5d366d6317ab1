"""A process that imports a base model into the emulator's registry, in step with the other such processes: all
upload at once (one barrier), then all register at once (a second barrier), for the test that four imports of the
same bytes at once register one version."""

from __future__ import annotations

from typing import Any


def import_in_step(
    barriers: tuple[Any, Any], results: Any, url: str, bucket: str, region: str, folder: str, model: str
) -> None:
    import boto3
    from botocore.config import Config

    from loraops.base_import import upload_base
    from loraops.base_sources import LocalFolder
    from loraops.registry import Registry

    config = Config(retries={"max_attempts": 1})
    clients = {
        name: boto3.client(
            name,
            endpoint_url=url,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=config,
        )
        for name in ("sagemaker", "s3")
    }
    registry = Registry(clients["sagemaker"], clients["s3"], bucket, region)
    try:
        barriers[0].wait(timeout=120)
        digest = upload_base(registry, LocalFolder(folder), model)
        barriers[1].wait(timeout=120)
        results.put(registry.register_base(model, digest).arn)
    except Exception as error:  # reported to the test, which fails with it
        results.put(f"error: {type(error).__name__}: {error}")
