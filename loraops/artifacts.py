"""What a model version serves, checked before it is stored or registered, and written once.

- :func:`served_files`: the one exclusion list every source (local folder, S3, the Hub) goes through: git metadata
  (``.git/``, ``.gitattributes``), caches (``.cache/``, ``__pycache__/``), Meta's raw checkpoints (``original/``,
  ``*.pth``) and ``*.bin`` weights beside ``*.safetensors`` (the same weights twice).
- :func:`check_safetensors`: a ``.safetensors`` file's header parses, every tensor's byte range matches its dtype
  and shape, and the ranges end exactly at the file's size (a truncated or padded file is refused).
- :func:`write_once`: put an object only if the key is free (S3 conditional write, ``If-None-Match: *``), with
  S3's SHA-256 checksum and the file's digest in its metadata; a key already holding the same digest is accepted,
  a key holding other bytes is an error. The bucket policy refuses any other write under the write-once prefixes.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

#: Path components never served (any depth).
EXCLUDED_DIRS = (".git", ".cache", ".huggingface", "__pycache__", "original")
#: File names never served.
EXCLUDED_NAMES = (".gitattributes", ".DS_Store", "*.pth", "*.lock")
#: Object metadata key holding a written file's ``sha256:<hex>``.
DIGEST_METADATA = "loraops-sha256"
#: Bytes per part of a multipart write-once upload (S3's minimum part is 5 MiB).
PART_SIZE = 64 * 1024 * 1024
#: safetensors element sizes per dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


class ArtifactError(ValueError):
    """A file or object cannot be served as it is; nothing was written."""


def excluded(name: str) -> bool:
    """Whether relative path ``name`` is never part of a served model."""
    parts = name.split("/")
    return any(p in EXCLUDED_DIRS for p in parts[:-1]) or any(fnmatch.fnmatch(parts[-1], p) for p in EXCLUDED_NAMES)


def served_files(files: dict[str, int]) -> dict[str, int]:
    """``files`` (relative name -> size) without what a model folder holds but does not serve."""
    keep = {n: size for n, size in files.items() if not excluded(n)}
    if any(n.endswith(".safetensors") and "/" not in n for n in keep):
        keep = {n: size for n, size in keep.items() if not (n.endswith(".bin") and "/" not in n)}
    return keep


def check_safetensors(name: str, size: int, read: Callable[[int, int], bytes]) -> None:
    """Raise :class:`ArtifactError` unless ``name`` (``size`` bytes; ``read(offset, length)`` reads it) is a
    complete safetensors file: 8-byte header length, JSON header, tensors that tile the data exactly."""
    if size < 8:
        raise ArtifactError(f"{name}: {size} bytes, too short for a safetensors file")
    (length,) = struct.unpack("<Q", read(0, 8))
    if length > MAX_HEADER or 8 + length > size:
        raise ArtifactError(f"{name}: header of {length} bytes does not fit the file's {size} bytes (truncated?)")
    try:
        header = json.loads(read(8, length))
    except (UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(f"{name}: the safetensors header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{name}: the safetensors header is not a JSON object")
    end = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            expected = count * DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{name}: tensor {tensor!r} has no valid dtype, shape and data_offsets") from None
        if stop - begin != expected or begin < 0:
            raise ArtifactError(f"{name}: tensor {tensor!r} spans {stop - begin} bytes, its shape needs {expected}")
        end = max(end, stop)
    if 8 + length + end != size:
        raise ArtifactError(
            f"{name}: the header describes {8 + length + end} bytes, the file has {size} (truncated or corrupt)"
        )


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
    if checksum and "-" not in checksum and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
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
