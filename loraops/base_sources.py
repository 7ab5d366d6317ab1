"""Where a base model import reads from: a local folder, another S3 prefix, or the Hugging Face Hub, each listing
its files, reading each once for its digest (the Hub's bytes staged under ``staging/`` as they are read), and
giving ranged reads and streams of them; and where the import writes (:class:`Target`)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from loraops import s3_layout
from loraops.naming import base_group_name
from loraops.packages import RegistryError

Progress = Callable[[str, int], None]
CHUNK = 8 * 1024 * 1024
HUB_ENDPOINT = "https://huggingface.co"


@dataclass
class Target:
    """Where an import writes: the registry's bucket, a staging prefix for bytes in transit, progress (``name`` is
    ``"hash <file>"`` while a file is read for its digest, ``"store <file>"`` while it is written)."""

    s3: Any
    bucket: str
    staging: str
    progress: Progress | None = None

    def advance(self, name: str, n: int) -> None:
        if self.progress:
            self.progress(name, n)


class Source(Protocol):
    description: str

    def list(self) -> dict[str, int]:
        """Relative file name -> size in bytes (every file; :func:`loraops.model_files.served_files` filters)."""

    def digest(self, name: str, target: Target) -> str:
        """``sha256:<hex>`` of one file, read once (reporting progress)."""

    def read(self, name: str, offset: int, length: int, target: Target) -> bytes:
        """``length`` bytes of one file from ``offset`` (after :meth:`digest`)."""

    def open(self, name: str, target: Target) -> BinaryIO:
        """The file's bytes as a stream (after :meth:`digest`), to be written once at its final key."""

    def cleanup(self, target: Target) -> None:
        """Remove anything the import staged."""


def _hash_stream(stream: BinaryIO, name: str, target: Target) -> str:
    sha = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        sha.update(chunk)
        target.advance(f"hash {name}", len(chunk))
    return f"sha256:{sha.hexdigest()}"


@dataclass
class LocalFolder:
    """An uncompressed Hugging Face folder on this machine."""

    path: Path
    description: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.description = self.description or f"local folder {self.path}"

    def list(self) -> dict[str, int]:
        if not self.path.is_dir():
            raise RegistryError(f"{self.path} is not a folder")
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        return {p.relative_to(self.path).as_posix(): p.stat().st_size for p in files}

    def digest(self, name: str, target: Target) -> str:
        with open(self.path / name, "rb") as handle:
            return _hash_stream(handle, name, target)

    def read(self, name: str, offset: int, length: int, target: Target) -> bytes:
        with open(self.path / name, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def open(self, name: str, target: Target) -> BinaryIO:
        return open(self.path / name, "rb")

    def cleanup(self, target: Target) -> None:
        pass


@dataclass
class S3Folder:
    """An uncompressed Hugging Face folder under another S3 prefix (any bucket this identity can read)."""

    uri: str
    s3: Any
    description: str = ""

    def __post_init__(self) -> None:
        try:
            self.bucket, self.prefix = s3_layout.split_s3_uri(self.uri if self.uri.endswith("/") else self.uri + "/")
        except ValueError as error:
            raise RegistryError(str(error)) from None
        self.description = self.description or f"s3://{self.bucket}/{self.prefix}"

    def list(self) -> dict[str, int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return {
            o["Key"][len(self.prefix) :]: o["Size"]
            for page in pages
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")  # "folder" placeholders
        }

    def digest(self, name: str, target: Target) -> str:
        return _hash_stream(self.open(name, target), name, target)

    def read(self, name: str, offset: int, length: int, target: Target) -> bytes:
        return _ranged(self.s3, self.bucket, self.prefix + name, offset, length)

    def open(self, name: str, target: Target) -> BinaryIO:
        # Streamed through this process rather than copied inside S3: CopyObject cannot carry the conditional
        # write that the bucket policy requires under base/.
        return self.s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]

    def cleanup(self, target: Target) -> None:
        pass


def _ranged(s3: Any, bucket: str, key: str, offset: int, length: int) -> bytes:
    if length <= 0:
        return b""
    return s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")["Body"].read()


class _NoCredentialsAcrossHosts(urllib.request.HTTPRedirectHandler):
    """Follow the Hub's redirects to its file CDN without sending the token there."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


@dataclass
class HubRepo:
    """A model repository on the Hugging Face Hub (or a mirror at ``$HF_ENDPOINT``).

    Talks to the Hub's HTTP API with the standard library rather than ``huggingface_hub``: the import function
    runs on Lambda, whose bundle carries no compiled dependencies (``huggingface_hub`` pulls several)."""

    repo_id: str
    revision: str = "main"
    token: str = ""
    endpoint: str = ""
    description: str = ""
    _staged: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        base_group_name(self.repo_id)  # an <org>/<model> id, or a clear error
        self.endpoint = (self.endpoint or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")
        self._opener = urllib.request.build_opener(_NoCredentialsAcrossHosts())
        self.commit = ""

    def _open(self, path: str):
        request = urllib.request.Request(f"{self.endpoint}/{path}")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(request, timeout=60)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise RegistryError(
                    f"the Hub refused {self.repo_id} (HTTP {error.code}): accept the model's licence on the Hub "
                    "and give a token of an account that has"
                ) from None
            if error.code == 404:
                raise RegistryError(f"the Hub has no {self.repo_id} at revision {self.revision}") from None
            raise RegistryError(f"the Hub answered HTTP {error.code} for {path}") from None
        except urllib.error.URLError as error:
            raise RegistryError(f"cannot reach the Hub at {self.endpoint}: {error.reason}") from None

    def list(self) -> dict[str, int]:
        quoted = urllib.parse.quote(self.revision, safe="")
        with self._open(f"api/models/{self.repo_id}/revision/{quoted}?blobs=true") as response:
            info = json.load(response)
        self.commit = info.get("sha") or self.revision  # every file comes from this one commit
        self.description = f"hf://{self.repo_id}@{self.commit}"
        return {s["rfilename"]: int(s.get("size") or 0) for s in info.get("siblings", [])}

    def digest(self, name: str, target: Target) -> str:
        key = target.staging + name
        digest: dict[str, str] = {}
        with self._open(f"{self.repo_id}/resolve/{self.commit}/{urllib.parse.quote(name)}") as response:
            reader = _HashingReader(response, name, target, digest)
            target.s3.upload_fileobj(reader, target.bucket, key)
        self._staged.append(key)
        return digest["value"]

    def read(self, name: str, offset: int, length: int, target: Target) -> bytes:
        return _ranged(target.s3, target.bucket, target.staging + name, offset, length)

    def open(self, name: str, target: Target) -> BinaryIO:
        return target.s3.get_object(Bucket=target.bucket, Key=target.staging + name)["Body"]

    def cleanup(self, target: Target) -> None:
        for key in self._staged:
            target.s3.delete_object(Bucket=target.bucket, Key=key)
        self._staged.clear()


class _HashingReader:
    """A file-like object over an HTTP response that hashes what the uploader reads from it."""

    def __init__(self, stream: BinaryIO, name: str, target: Target, result: dict[str, str]) -> None:
        self.stream, self.name, self.target, self.result = stream, name, target, result
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size if size and size > 0 else CHUNK)
        if chunk:
            self.sha.update(chunk)
            self.target.advance(f"hash {self.name}", len(chunk))
        else:
            self.result["value"] = f"sha256:{self.sha.hexdigest()}"
        return chunk


def source_from(location: str, s3: Any, revision: str = "main", token: str = "") -> Source:
    """``./folder`` | ``s3://bucket/prefix/`` | ``hf://<org>/<model>`` -> the matching source."""
    if location.startswith("s3://"):
        return S3Folder(location, s3)
    if location.startswith("hf://"):
        return HubRepo(location.removeprefix("hf://"), revision=revision, token=token)
    return LocalFolder(Path(location))
