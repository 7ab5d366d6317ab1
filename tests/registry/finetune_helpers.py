"""Plain helpers of the registered-fine-tune tests: a job's output uploaded, a base imported and approved, what S3
and the registry then hold."""

from __future__ import annotations

import json
from pathlib import Path

from loraops import s3_layout
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.manifest import MANIFEST_FILE
from loraops.naming import OutputMode
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, MODEL_ID, upload_folder

JOB = "loraops-adapter-1"


def _job(aws, folder: Path, job: str = JOB, mode: OutputMode = OutputMode.ADAPTER, group: str = ADAPTER_GROUP) -> str:
    prefix = s3_layout.model_prefix(mode, group, job)
    upload_folder(aws, folder, prefix)
    return prefix


def _approved_base(registry, folder: Path):
    return registry.decide(import_base(registry, LocalFolder(folder), MODEL_ID).arn, approve=True)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())


def _read(aws, key: str) -> bytes:
    return aws["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _keys(aws, prefix: str) -> list[str]:
    pages = aws["s3"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _versions(aws, group: str = ADAPTER_GROUP) -> list[dict]:
    return aws["sagemaker"].list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]


def _flip_last_byte(aws, key: str) -> None:
    body = _read(aws, key)
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))  # same size, other bytes
