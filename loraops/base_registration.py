"""Registering a base model put under ``base/<group>/<content hex>/`` by :mod:`loraops.base_import`, with the
``loraops-base.json`` it records: the files it lists lie at the prefix with their recorded sizes and digests, and
the group belongs to this environment (its ``loraops:environment`` tag is the artifact bucket's)."""

from __future__ import annotations

import json
from typing import Any

from loraops import s3_layout
from loraops.artifacts import is_precondition_failure
from loraops.manifest import BASE_MANIFEST, WEIGHT_SUFFIXES, content_digest
from loraops.naming import Metadata, base_group_name
from loraops.packages import Package, RegistryError
from loraops.registration import Registration


class BaseRegistration(Registration):
    """Base model versions: their manifest written once, and their package."""

    def register_base(self, model_id: str, digest: str) -> Package:
        """Register the base model that lies under ``base/<group>/<content hex>/`` with its digests (put there by
        :mod:`loraops.base_import`); the same content digest again gives the package already registered."""
        group = base_group_name(model_id)
        prefix = s3_layout.base_model_prefix(group, digest)
        manifest = self.read_json(prefix + BASE_MANIFEST, "base manifest")
        if manifest.get("content_digest") != digest or manifest.get("model_id") != model_id:
            raise RegistryError(
                f"s3://{self.bucket}/{prefix}{BASE_MANIFEST} describes {manifest.get('model_id')} "
                f"{manifest.get('content_digest')}, not {model_id} {digest}"
            )
        files, sizes = manifest.get("files") or {}, manifest.get("sizes") or {}
        if content_digest(files, prefix) != digest or set(files) != set(sizes):
            raise RegistryError(f"s3://{self.bucket}/{prefix}{BASE_MANIFEST}: its files do not make {digest}")
        if not any(n.endswith(WEIGHT_SUFFIXES) and "/" not in n for n in files):
            raise RegistryError(f"s3://{self.bucket}/{prefix}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
        self._check_objects(prefix, sizes, files)
        tags = self._group_tags(group)
        if found := self._find(group, Metadata.CONTENT_DIGEST, digest):
            return found
        metadata = {
            Metadata.MODEL_ID: model_id,
            Metadata.CONTENT_DIGEST: digest,
            Metadata.WEIGHTS_DIGEST: manifest.get("weights_digest", ""),
            Metadata.LICENCE: manifest.get("licence", ""),
        }
        description = f"{model_id} ({digest[:19]})"
        return self._register_once(
            group, Metadata.CONTENT_DIGEST, digest, lambda: self._create(group, tags, prefix, metadata, description)
        )

    def write_base_manifest(self, prefix: str, manifest: dict[str, Any]) -> None:
        """Write ``loraops-base.json`` once. An import of the same bytes finds it there and keeps it (the first
        import's source and licence stay); one that describes other files under that prefix is refused."""
        body = json.dumps(manifest, indent=2).encode()
        try:
            self.s3.put_object(Bucket=self.bucket, Key=prefix + BASE_MANIFEST, Body=body, IfNoneMatch="*")
            return
        except self.s3.exceptions.ClientError as error:
            if not is_precondition_failure(error):
                raise
        existing = self.read_json(prefix + BASE_MANIFEST, "base manifest")
        same = ("model_id", "content_digest", "files", "sizes")
        if any(existing.get(k) != manifest.get(k) for k in same):
            raise RegistryError(f"s3://{self.bucket}/{prefix}{BASE_MANIFEST} already describes other files")
