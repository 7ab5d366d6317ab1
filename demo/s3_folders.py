"""S3 prefixes as local folders and back: what SageMaker does with channels, model data and job outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraops import s3_layout


def download_prefix(s3: Any, uri: str, folder: Path) -> int:
    """Every object under an ``s3://`` prefix into ``folder`` (what SageMaker does for an S3Prefix channel)."""
    bucket, prefix = s3_layout.split_s3_uri(uri)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = folder / item["Key"][len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            count += 1
    return count


def upload_folder(s3: Any, folder: Path, uri: str) -> int:
    bucket, prefix = s3_layout.split_s3_uri(uri)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
    return len(files)
