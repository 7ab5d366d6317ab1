"""Import a base model into ``base/<group>/<weights hex>/`` uncompressed and register it, from a local folder,
another S3 location or the Hugging Face Hub.

Every source goes through the same three steps, so the Hub shares the code after its download:

1. **digest**: read each file once, streaming, and compute its SHA-256 (the Hub source stages the bytes under
   ``staging/`` as it reads them, because the final key depends on the digest of all weight files);
2. **place**: put each file at its final key, skipping files already there with the same size (a local file is
   uploaded; an S3 or staged object is copied inside S3, never through this process);
3. **record**: write ``loraops-base.json`` (per-file digests, sizes, source, licence) last, then register.

An import cut short leaves no ``loraops-base.json``, so nothing registers it; running it again finishes it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from loraops import s3_layout
from loraops.manifest import MANIFEST_FILE, WEIGHT_SUFFIXES, combined_weights_digest, file_digest
from loraops.naming import base_group_name
from loraops.registry import BASE_MANIFEST, Package, Registry, RegistryError

Progress = Callable[[str, int], None]
CHUNK = 8 * 1024 * 1024
HUB_ENDPOINT = "https://huggingface.co"
#: Not imported from the Hub: git metadata, Meta's raw checkpoints beside the HF weights.
HUB_EXCLUDE = (".gitattributes", "original/*", "*.pth")


@dataclass
class Target:
    """Where an import writes: the registry's bucket, a staging prefix for bytes in transit, progress."""

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
        """Relative file name -> size in bytes."""

    def digest(self, name: str, target: Target) -> str:
        """``sha256:<hex>`` of one file, read once (reporting progress)."""

    def place(self, name: str, key: str, target: Target) -> None:
        """Put one file at ``key`` in the target bucket."""

    def cleanup(self, target: Target) -> None:
        """Remove anything the import staged."""


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
        return {str(p.relative_to(self.path)): p.stat().st_size for p in files}

    def digest(self, name: str, target: Target) -> str:
        return file_digest(self.path / name)

    def place(self, name: str, key: str, target: Target) -> None:
        target.s3.upload_file(str(self.path / name), target.bucket, key, Callback=lambda n: target.advance(name, n))

    def cleanup(self, target: Target) -> None:
        pass


@dataclass
class S3Folder:
    """An uncompressed Hugging Face folder under another S3 prefix (any bucket this identity can read)."""

    uri: str
    s3: Any
    description: str = ""

    def __post_init__(self) -> None:
        self.bucket, self.prefix = s3_layout.split_s3_uri(self.uri if self.uri.endswith("/") else self.uri + "/")
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
        result: dict[str, str] = {}
        reader = _HashingReader(
            self.s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"], name, target, result
        )
        while reader.read(CHUNK):
            pass
        return result["value"]

    def place(self, name: str, key: str, target: Target) -> None:
        # boto3's managed copy: server-side, multipart above its threshold (objects over 5 GB included)
        target.s3.copy({"Bucket": self.bucket, "Key": self.prefix + name}, target.bucket, key)

    def cleanup(self, target: Target) -> None:
        pass


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
    exclude: tuple[str, ...] = HUB_EXCLUDE
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
        files = {s["rfilename"]: int(s.get("size") or 0) for s in info.get("siblings", [])}
        keep = {n: size for n, size in files.items() if not any(fnmatch.fnmatch(n, p) for p in self.exclude)}
        if any(n.endswith(".safetensors") and "/" not in n for n in keep):  # the same weights twice otherwise
            keep = {n: size for n, size in keep.items() if not (n.endswith(".bin") and "/" not in n)}
        return keep

    def digest(self, name: str, target: Target) -> str:
        key = target.staging + name
        digest: dict[str, str] = {}
        with self._open(f"{self.repo_id}/resolve/{self.commit}/{urllib.parse.quote(name)}") as response:
            reader = _HashingReader(response, name, target, digest)
            target.s3.upload_fileobj(reader, target.bucket, key)
        self._staged.append(key)
        return digest["value"]

    def place(self, name: str, key: str, target: Target) -> None:
        target.s3.copy({"Bucket": target.bucket, "Key": target.staging + name}, target.bucket, key)

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
            self.target.advance(self.name, len(chunk))
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


def _checked(files: dict[str, int], source: Source) -> dict[str, int]:
    bad = sorted(n for n in files if n.startswith("/") or ".." in n.split("/"))
    if bad:
        raise RegistryError(f"{source.description}: file names that leave the folder: {bad}")
    files = {n: size for n, size in files.items() if n not in (BASE_MANIFEST, MANIFEST_FILE)}
    if "config.json" not in files:
        raise RegistryError(f"{source.description}: not a Hugging Face model folder (no config.json)")
    if not any(n.endswith(WEIGHT_SUFFIXES) and "/" not in n for n in files):
        raise RegistryError(f"{source.description}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return files


def upload_base(
    registry: Registry, source: Source, model_id: str, licence: str = "", progress: Progress | None = None
) -> str:
    """Steps 1-3 of the module docstring, without registering. Returns the weights digest."""
    group = base_group_name(model_id)
    target = Target(registry.s3, registry.bucket, s3_layout.staging_prefix("base", uuid.uuid4().hex), progress)
    try:
        files = _checked(source.list(), source)
        digests = {name: source.digest(name, target) for name in files}
        weights = combined_weights_digest(digests, source.description)
        prefix = s3_layout.base_model_prefix(group, weights)
        present = {o["Key"][len(prefix) :]: o["Size"] for o in registry.objects(prefix)}
        for name in files:
            if present.get(name) != files[name]:
                source.place(name, prefix + name, target)
    finally:
        source.cleanup(target)
    manifest = {
        "model_id": model_id,
        "weights_digest": weights,
        "files": digests,
        "sizes": files,
        "source": source.description,
        "licence": licence,
    }
    registry.s3.put_object(Bucket=registry.bucket, Key=prefix + BASE_MANIFEST, Body=json.dumps(manifest, indent=2))
    return weights


def import_base(
    registry: Registry, source: Source, model_id: str, licence: str = "", progress: Progress | None = None
) -> Package:
    """Import ``source`` under ``base/`` and register it (the same bytes again -> the package already there)."""
    if isinstance(source, HubRepo) and not licence:
        raise RegistryError(
            f"importing {source.repo_id} from the Hub records the licence you accepted for it: name it "
            "(e.g. --licence llama2)"
        )
    return registry.register_base(model_id, upload_base(registry, source, model_id, licence, progress))
