"""An adapter's files as one deterministic ``.tar.gz``: what an inference component's ``ArtifactUrl`` must name."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from loraops.artifacts import PART_SIZE

#: Fixed metadata of every archive member, so the same files always give the same archive bytes.
_ARCHIVE_MTIME = 0


def adapter_archive(files: dict[str, Callable[[], BinaryIO]], sizes: dict[str, int]) -> tuple[BinaryIO, int, str]:
    """``files`` (relative name -> opener of its bytes, ``sizes`` each) packed as one gzip-compressed tar, members
    in name order with fixed mtime, owner and mode (gzip header without name or time): the same files give the same
    archive, byte for byte. Returns the archive (a temporary file, at its start), its size and its digest."""
    spool = tempfile.SpooledTemporaryFile(max_size=PART_SIZE)  # noqa: SIM115 - returned to the caller, who closes it
    with gzip.GzipFile(filename="", mode="wb", fileobj=spool, mtime=_ARCHIVE_MTIME, compresslevel=6) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(files):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = sizes[name], _ARCHIVE_MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                body = files[name]()
                try:
                    tar.addfile(info, body)
                finally:
                    body.close()
    size = spool.tell()
    spool.seek(0)
    sha = hashlib.sha256()
    while chunk := spool.read(8 * 1024 * 1024):
        sha.update(chunk)
    spool.seek(0)
    return spool, size, f"sha256:{sha.hexdigest()}"
