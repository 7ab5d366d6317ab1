"""What a registry holds and reads in its environment: the SageMaker and S3 clients, the artifact bucket, the
approval policy and serving image its packages get, the environment the bucket's tag names, and the bucket's
objects, JSON documents and fine-tune manifests (read through :class:`loraops.manifest.Manifest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraops.manifest import Manifest, ManifestError, strict_json
from loraops.naming import APPROVAL_POLICIES, TAG_ENVIRONMENT
from loraops.packages import RegistryError


@dataclass
class RegistryStore:
    """The clients, bucket and policy of one environment's registry, and what it reads from the bucket.

    ``approval``: the environment's configured policy (the registration functions' ``APPROVAL``); ``None`` where
    the caller does not know it (the CLI): then the group's tag alone decides. Never a caller's choice: it can only
    make a group's ``auto`` stricter, never a ``manual`` group's looser."""

    sagemaker: Any
    s3: Any
    bucket: str
    region: str
    approval: str | None = None
    image: str = ""  # the serving image packages name; from loraops.images when empty
    _environment: str | None = field(default=None, init=False, repr=False)
    _environment_read: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.approval not in (None, *APPROVAL_POLICIES):
            raise RegistryError(f"approval must be auto or manual, got {self.approval!r}")
        if not self.image:
            from loraops.images import image_uri

            self.image = image_uri("serving", self.region)

    @property
    def environment(self) -> str | None:
        """The environment this registry serves: the artifact bucket's ``loraops:environment`` tag (the stacks tag
        every resource with it); ``None`` for an untagged bucket."""
        if not self._environment_read:
            try:
                tags = self.s3.get_bucket_tagging(Bucket=self.bucket).get("TagSet", [])
            except self.s3.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchTagSet":
                    raise  # AccessDenied must not switch the environment check off
                tags = []
            self._environment = next((t["Value"] for t in tags if t["Key"] == TAG_ENVIRONMENT), None)
            self._environment_read = True
        return self._environment

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        if not prefix:
            return []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o for page in pages for o in page.get("Contents", [])]

    def read_json(self, key: str, what: str) -> dict[str, Any]:
        """A JSON object in the artifact bucket, or a :class:`RegistryError` naming ``what`` is wrong."""
        body = self._body(key, what)
        try:
            data = strict_json(body)
        except ValueError as error:
            raise RegistryError(f"s3://{self.bucket}/{key}: {what} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"s3://{self.bucket}/{key}: {what} is not a JSON object")
        return data

    def read_manifest(self, key: str, what: str = "training manifest") -> tuple[Manifest, bytes]:
        """The fine-tune manifest (``loraops-manifest.json``) at ``key``, read only through
        :meth:`loraops.manifest.Manifest.from_json`, and the bytes it was parsed from; a :class:`RegistryError`
        naming ``what`` and what is wrong with it otherwise."""
        body = self._body(key, what)
        try:
            return Manifest.from_json(body, f"s3://{self.bucket}/{key}: {what}"), body
        except ManifestError as error:
            raise RegistryError(str(error)) from None

    def _body(self, key: str, what: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.ClientError:
            raise RegistryError(f"no {what} at s3://{self.bucket}/{key}") from None
