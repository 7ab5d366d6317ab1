"""Which files of a model folder a version serves, and the check that a ``.safetensors`` file is whole.

- :func:`served_files`: the one exclusion list every source (local folder, S3, the Hub) goes through: git metadata
  (``.git/``, ``.gitattributes``), caches (``.cache/``, ``__pycache__/``), Meta's raw checkpoints (``original/``,
  ``*.pth``) and ``*.bin`` weights beside ``*.safetensors`` (the same weights twice).
- :func:`check_safetensors`: a ``.safetensors`` file's header parses, every tensor's byte range matches its dtype
  and shape, and the ranges end exactly at the file's size (a truncated or padded file is refused).
"""

from __future__ import annotations

import fnmatch
import json
import struct
from collections.abc import Callable

from loraops.artifacts import ArtifactError

#: Path components never served (any depth).
EXCLUDED_DIRS = (".git", ".cache", ".huggingface", "__pycache__", "original")
#: File names never served.
EXCLUDED_NAMES = (".gitattributes", ".DS_Store", "*.pth", "*.lock")
#: safetensors element sizes per dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


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
