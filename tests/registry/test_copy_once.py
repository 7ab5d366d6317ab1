"""``copy_once``, the copy a registration writes with (issue #20): a write-once key is never replaced, a copy from
another bucket is checked too, a large file is copied in parts, and S3's reported SHA-256 of the parts is used
(or aborts the copy) instead of reading the bytes here. Against moto's server over HTTP."""

from __future__ import annotations

import base64
import hashlib

import pytest

from loraops import artifacts, s3_layout
from loraops.artifacts import ArtifactError, copy_once, stored_digest
from tests.registry.conftest import BUCKET
from tests.registry.finetune_helpers import _keys, _read
from tests.registry.stand_ins import CallRecorder


def test_a_write_once_key_is_never_replaced_by_a_copy(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    mine, other = b"registered bytes", b"other bytes"
    for key, body in (("adapters/g/j/a", mine), ("adapters/g/j/b", other)):
        aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=body)
    digest = "sha256:" + hashlib.sha256(mine).hexdigest()

    assert copy_once(aws["s3"], BUCKET, "adapters/g/j/a", "finetuned/g/x/a", digest) is True
    assert copy_once(aws["s3"], BUCKET, "adapters/g/j/a", "finetuned/g/x/a", digest) is False  # already there
    with pytest.raises(ArtifactError, match="already holds other bytes"):
        copy_once(aws["s3"], BUCKET, "adapters/g/j/b", "finetuned/g/x/a", "sha256:" + hashlib.sha256(other).hexdigest())
    assert _read(aws, "finetuned/g/x/a") == mine
    assert stored_digest(aws["s3"], BUCKET, "finetuned/g/x/a") == digest


def test_a_copy_from_another_bucket_is_checked_and_written_once_too(aws):
    """What a promotion between environments' buckets uses: the same checked, conditional copy."""
    aws["s3"].create_bucket(Bucket=BUCKET)
    aws["s3"].create_bucket(Bucket="loraops-staging-artifacts")
    aws["s3"].put_object(Bucket="loraops-staging-artifacts", Key="finetuned/g/x/a", Body=b"approved in staging")
    digest = "sha256:" + hashlib.sha256(b"approved in staging").hexdigest()
    assert copy_once(aws["s3"], BUCKET, "finetuned/g/x/a", "finetuned/g/x/a", digest, "loraops-staging-artifacts")
    assert _read(aws, "finetuned/g/x/a") == b"approved in staging"
    with pytest.raises(ArtifactError, match="holds sha256:"):
        copy_once(
            aws["s3"], BUCKET, "finetuned/g/x/a", "finetuned/g/y/a", "sha256:" + "0" * 64, "loraops-staging-artifacts"
        )


def test_a_file_larger_than_one_copy_part_is_copied_in_parts(aws, monkeypatch):
    monkeypatch.setattr(artifacts, "COPY_PART_LIMIT", 5 * 1024 * 1024)
    monkeypatch.setattr(artifacts, "COPY_PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    aws["s3"].create_bucket(Bucket=BUCKET)
    body = bytes(range(256)) * (11 * 4096)  # 11 MiB: three parts
    aws["s3"].put_object(Bucket=BUCKET, Key="merged/g/j/model.safetensors", Body=body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    recorder = CallRecorder(aws["s3"])

    assert copy_once(aws["s3"], BUCKET, "merged/g/j/model.safetensors", "finetuned/g/x/model.safetensors", digest)

    assert [op for op, _ in recorder.of("s3")].count("UploadPartCopy") == 3
    assert _read(aws, "finetuned/g/x/model.safetensors") == body
    assert stored_digest(aws["s3"], BUCKET, "finetuned/g/x/model.safetensors") == digest


def _report_part_checksum(aws, value: str | None = None) -> None:
    """S3 returns the SHA-256 of a copied part when the upload was created with that algorithm; moto 5.2.x leaves
    it out, so it is added to the parsed answer here (of the bytes actually copied, or ``value``)."""

    def remember(params, context, **_):
        source = params["CopySource"]  # botocore has already turned it into "bucket/key" (no version: unversioned)
        bucket, key = (source["Bucket"], source["Key"]) if isinstance(source, dict) else source.split("/", 1)
        body = aws["s3"].get_object(Bucket=bucket, Key=key.split("?")[0])["Body"].read()
        context["copied"] = base64.b64encode(hashlib.sha256(body).digest()).decode()

    def add(parsed, context, **_):
        parsed["CopyPartResult"]["ChecksumSHA256"] = value or context["copied"]

    aws["s3"].meta.events.register("before-parameter-build.s3.UploadPartCopy", remember)
    aws["s3"].meta.events.register("after-call.s3.UploadPartCopy", add)


def test_where_s3_reports_the_copied_parts_sha256_no_byte_is_read_here(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    body = b"adapter weights" * 100
    aws["s3"].put_object(Bucket=BUCKET, Key="adapters/g/j/w", Body=body)
    _report_part_checksum(aws)
    recorder = CallRecorder(aws["s3"])

    copy_once(aws["s3"], BUCKET, "adapters/g/j/w", "finetuned/g/x/w", "sha256:" + hashlib.sha256(body).hexdigest())

    # the only GetObject is the stand-in's own (it computes what S3 would report); the copy read nothing itself
    assert [op for op, params in recorder.of("s3") if op == "GetObject" and "If-Match" in str(params)] == []
    assert [op for op, _ in recorder.of("s3")].count("UploadPartCopy") == 1
    assert _read(aws, "finetuned/g/x/w") == body


def test_where_s3_reports_another_sha256_the_copy_is_aborted(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    aws["s3"].put_object(Bucket=BUCKET, Key="adapters/g/j/w", Body=b"bytes")
    _report_part_checksum(aws, base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(ArtifactError, match=r"holds sha256:0{64}, not"):
        copy_once(
            aws["s3"], BUCKET, "adapters/g/j/w", "finetuned/g/x/w", "sha256:" + hashlib.sha256(b"bytes").hexdigest()
        )
    assert _keys(aws, s3_layout.FINETUNED) == []
    assert aws["s3"].list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
