"""Objects written once in the artifact bucket, each checked against its digest.

- :func:`write_once`: put an object only if the key is free (S3 conditional write, ``If-None-Match: *``), with
  S3's SHA-256 checksum and the file's digest in its metadata; a key already holding the same digest is accepted,
  a key holding other bytes is an error. The bucket policy refuses any other write under the write-once prefixes.
- :func:`copy_once` / :func:`start_copy`: the same for an object already in the bucket (a job's output), copied
  server-side and checked against its digest before it becomes visible.
- :func:`stored_digest`: the digest an object was written with.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

#: Object metadata key holding a written file's ``sha256:<hex>``.
DIGEST_METADATA = "loraops-sha256"
#: Bytes per part of a multipart write-once upload (S3's minimum part is 5 MiB).
PART_SIZE = 64 * 1024 * 1024
#: The largest part UploadPartCopy copies (S3's limit): an object up to this size is copied as one part.
COPY_PART_LIMIT = 5 * 1024**3
#: Parts of a larger object's copy (at most 10,000 parts: larger objects get larger parts).
COPY_PART_SIZE = 1024**3


class ArtifactError(ValueError):
    """A file or object cannot be served as it is; nothing was written."""


def _digest_of(head: dict[str, Any]) -> str:
    return head.get("Metadata", {}).get(DIGEST_METADATA, "")


def is_precondition_failure(error: Exception) -> bool:
    response = getattr(error, "response", {}) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def stored_digest(s3: Any, bucket: str, key: str, trust_metadata: bool = True) -> str:
    """The ``sha256:<hex>`` an object was written with: S3's own SHA-256 checksum where the object has a full-object
    one (single-part uploads), else (``trust_metadata``: only where :func:`write_once` wrote it) the digest recorded
    in its metadata; ``""`` when neither."""
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    checksum = head.get("ChecksumSHA256", "")
    # A multipart object's (ETag ``…-<parts>``) SHA-256 is composite, never the object's; the emulator leaves out
    # the ``-<parts>`` suffix of the checksum but not of the ETag.
    multipart = "-" in head.get("ETag", "")
    if checksum and "-" not in checksum and not multipart and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        return "sha256:" + base64.b64decode(checksum).hex()
    return _digest_of(head) if trust_metadata else ""


def write_once(
    s3: Any,
    bucket: str,
    key: str,
    body: BinaryIO,
    size: int,
    digest: str,
    advance: Callable[[int], None] | None = None,
) -> bool:
    """Put ``body`` (``size`` bytes whose digest is ``digest``) at ``key`` unless the key exists. Returns True when
    written, False when the key already held ``digest``; raises :class:`ArtifactError` when it holds other bytes."""
    metadata = {DIGEST_METADATA: digest}
    try:
        if size <= PART_SIZE:
            data = body.read()
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(digest.split(":", 1)[1])).decode(),
                Metadata=metadata,
            )
            if advance:
                advance(len(data))
        else:
            _multipart(s3, bucket, key, body, metadata, advance)
        return True
    except Exception as error:  # botocore's ClientError, without importing botocore here
        if not is_precondition_failure(error):
            raise
    existing = stored_digest(s3, bucket, key)
    if existing != digest:
        raise ArtifactError(
            f"s3://{bucket}/{key} already holds other bytes ({existing or 'no recorded digest'}, not {digest}); "
            "a write-once key is never replaced"
        )
    return False


def _multipart(s3: Any, bucket: str, key: str, body: BinaryIO, metadata: dict[str, str], advance) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata=metadata)
    parts = []
    try:
        while chunk := body.read(PART_SIZE):
            number = len(parts) + 1
            part = s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=chunk,
                ChecksumAlgorithm="SHA256",
            )
            parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": part.get("ChecksumSHA256")})
            if advance:
                advance(len(chunk))
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{k: v for k, v in p.items() if v} for p in parts]},
            IfNoneMatch="*",
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        raise


def copy_once(s3: Any, bucket: str, source: str, key: str, digest: str, source_bucket: str | None = None) -> bool:
    """Copy object ``source`` (of ``source_bucket``, default ``bucket``) to the free key ``key`` of ``bucket``,
    server-side, only if its bytes have ``digest``; like :func:`write_once`: True when written, False when ``key``
    already held ``digest``, and :class:`ArtifactError` (nothing written) when the source's bytes or the key's
    differ."""
    return start_copy(s3, bucket, source, key, digest, source_bucket).complete()


@dataclass
class PendingCopy:
    """A copy whose bytes are checked and not yet visible: :meth:`complete` makes the object, :meth:`abort` drops
    it. Several copies checked first and completed after leave nothing behind when one of them is refused."""

    s3: Any
    bucket: str
    key: str
    digest: str
    upload_id: str | None  # None: an empty file, written on completion
    parts: list[dict[str, Any]]

    def complete(self) -> bool:
        """True when written, False when the key already held the digest; :class:`ArtifactError` when other bytes."""
        if self.upload_id is None:
            return write_once(self.s3, self.bucket, self.key, io.BytesIO(b""), 0, self.digest)
        try:
            self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
                IfNoneMatch="*",
            )
            return True
        except Exception as error:  # botocore's ClientError, without importing botocore here
            self.abort()
            if not is_precondition_failure(error):
                raise
        existing = stored_digest(self.s3, self.bucket, self.key)
        if existing != self.digest:
            raise ArtifactError(
                f"s3://{self.bucket}/{self.key} already holds other bytes ({existing or 'no recorded digest'}, not "
                f"{self.digest}); a write-once key is never replaced"
            )
        return False

    def abort(self) -> None:
        if self.upload_id is not None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


def start_copy(
    s3: Any, bucket: str, source: str, key: str, digest: str, source_bucket: str | None = None
) -> PendingCopy:
    """Copy ``source``'s bytes towards ``key`` and check them against ``digest``; :class:`ArtifactError` (nothing
    left behind) when they differ or the source changes meanwhile.

    Multipart UploadPartCopy, then (:meth:`PendingCopy.complete`) CompleteMultipartUpload with ``If-None-Match``:
    CopyObject cannot be conditional under a bucket policy that enforces conditional writes (S3 answers 501), and
    this way no byte passes through the caller. The source is pinned (its version, and its ETag with
    ``x-amz-copy-source-if-match``) so the bytes copied are those checked: by the SHA-256 S3 computes of a one-part
    copy where it returns one, else by reading the pinned source."""
    source_bucket = source_bucket or bucket
    head = s3.head_object(Bucket=source_bucket, Key=source)
    size, pinned = head["ContentLength"], {"Bucket": source_bucket, "Key": source}
    if head.get("VersionId") not in (None, "null"):
        pinned["VersionId"] = head["VersionId"]
    if size == 0:  # UploadPartCopy needs bytes to copy; an empty file is written on completion
        if digest != f"sha256:{hashlib.sha256(b'').hexdigest()}":
            raise ArtifactError(f"s3://{source_bucket}/{source} is empty, not {digest}; nothing was written")
        return PendingCopy(s3, bucket, key, digest, None, [])
    upload = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata={DIGEST_METADATA: digest}
    )
    pending = PendingCopy(s3, bucket, key, digest, upload["UploadId"], [])
    try:
        try:
            pending.parts, copied = _copy_parts(s3, bucket, key, upload["UploadId"], pinned, head["ETag"], size)
            if copied is None:  # no SHA-256 of the whole object from S3: hash the pinned source's bytes
                copied = _read_digest(s3, pinned, head["ETag"])
        except Exception as error:  # botocore's ClientError
            if is_precondition_failure(error):
                changed = f"s3://{source_bucket}/{source} changed while it was copied; nothing was written"
                raise ArtifactError(changed) from None
            raise
        if copied != digest:
            raise ArtifactError(f"s3://{source_bucket}/{source} holds {copied}, not {digest}; nothing was written")
    except BaseException:
        pending.abort()
        raise
    return pending


def _copy_parts(
    s3: Any, bucket: str, key: str, upload_id: str, source: dict[str, str], etag: str, size: int
) -> tuple[list[dict[str, Any]], str | None]:
    """UploadPartCopy of ``source`` in one part (up to :data:`COPY_PART_LIMIT`) or several; returns the parts and,
    for one part whose SHA-256 S3 returned, the object's digest (else None)."""
    part_size = size if size <= COPY_PART_LIMIT else max(COPY_PART_SIZE, math.ceil(size / 10_000))
    parts: list[dict[str, Any]] = []
    checksum = None
    for number, start in enumerate(range(0, size, part_size), start=1):
        ranged = {} if part_size == size else {"CopySourceRange": f"bytes={start}-{min(start + part_size, size) - 1}"}
        result = s3.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource=source,
            CopySourceIfMatch=etag,
            **ranged,
        )["CopyPartResult"]
        checksum = result.get("ChecksumSHA256")
        part = {"PartNumber": number, "ETag": result["ETag"]}
        parts.append({**part, "ChecksumSHA256": checksum} if checksum else part)
    if len(parts) == 1 and checksum:
        return parts, "sha256:" + base64.b64decode(checksum).hex()
    return parts, None


def _read_digest(s3: Any, source: dict[str, str], etag: str) -> str:
    extra = {"VersionId": source["VersionId"]} if "VersionId" in source else {}
    body = s3.get_object(Bucket=source["Bucket"], Key=source["Key"], IfMatch=etag, **extra)["Body"]
    sha = hashlib.sha256()
    while chunk := body.read(8 * 1024 * 1024):
        sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"
