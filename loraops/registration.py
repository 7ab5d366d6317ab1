"""Creating a package version once per content, checked before anything is written.

One version per content, also when registrations race: the same bytes (content digest), a base's or a fine-tune's,
give back the package already registered. Three mechanisms, none depending on timing: a lookup of a package
with the same digest; a registration claim, an S3 object under ``registrations/`` written with a conditional write
(``If-None-Match``), so one registration at a time creates the package while the others wait for it and return it;
and ``ClientToken`` on ``CreateModelPackage`` derived from the digest (SageMaker's own idempotency; the emulator
ignores it).

The approval status of a new package comes from the environment's policy (``APPROVAL`` of the registration
functions) and the group's ``loraops:approvalPolicy`` tag: auto-approved only when both say ``auto``.

Before a package is created, the files its manifest lists must lie at its prefix with their sizes, every digest S3
stores for one of them must equal the manifest's, and every ``.safetensors`` header must parse and match its file's
size."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from loraops import s3_layout
from loraops.artifacts import ArtifactError, is_precondition_failure, stored_digest
from loraops.manifest import EVALUATION_FILE
from loraops.model_files import check_safetensors
from loraops.naming import AUTO_APPROVAL, TAG_APPROVAL_POLICY, Metadata
from loraops.packages import APPROVED, PENDING, Package, RegistryError
from loraops.registry_lookup import RegistryLookup

#: A registration claim older than this is left by a registration that died: it may be taken over.
CLAIM_LEASE_SECONDS = 600
#: How long a registration waits for another one's package of the same content.
CLAIM_WAIT_SECONDS = CLAIM_LEASE_SECONDS + 60


def evaluation_metrics(bucket: str, prefix: str) -> dict[str, Any]:
    """``CreateModelPackage``'s ``ModelMetrics``: the fine-tune's evaluation file under ``prefix`` as its model
    quality statistics."""
    uri = s3_layout.s3_uri(bucket, prefix + EVALUATION_FILE)
    return {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": uri}}}


def client_token(group: str, identity: str) -> str:
    """``CreateModelPackage``'s ``ClientToken`` (1-36 of ``[a-zA-Z0-9-]``) for one content in one group."""
    return hashlib.sha256(f"{group}\0{identity}".encode()).hexdigest()[:36]


class Registration(RegistryLookup):
    """What every registration shares: the checks of its objects, the package created once, its approval status."""

    def _check_objects(self, prefix: str, sizes: dict[str, int], digests: dict[str, str] | None = None) -> None:
        """Every listed file lies at ``prefix`` with its size (and, where given, its stored digest), and every
        ``.safetensors`` file's header matches its size."""
        present = {o["Key"][len(prefix) :]: o["Size"] for o in self.objects(prefix)}
        wrong = sorted(n for n, size in sizes.items() if present.get(n) != size)
        if wrong:
            raise RegistryError(f"s3://{self.bucket}/{prefix}: files missing or of another size: {wrong}")
        for name, digest in (digests or {}).items():
            stored = stored_digest(self.s3, self.bucket, prefix + name)
            if stored and stored != digest:
                raise RegistryError(f"s3://{self.bucket}/{prefix}{name}: holds {stored}, the manifest says {digest}")
        try:
            for name, size in sizes.items():
                if name.endswith(".safetensors"):
                    check_safetensors(
                        f"s3://{self.bucket}/{prefix}{name}",
                        size,
                        lambda offset, length, key=prefix + name: self._read(key, offset, length),
                    )
        except ArtifactError as error:
            raise RegistryError(str(error)) from None

    def _read(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")[
            "Body"
        ].read()

    def approval_status(self, tags: dict[str, str]) -> str:
        """A new package's status: Approved only where the environment and the group's tag both say auto."""
        auto = tags.get(TAG_APPROVAL_POLICY) == AUTO_APPROVAL and self.approval in (None, AUTO_APPROVAL)
        return APPROVED if auto else PENDING

    def _create(
        self,
        group: str,
        tags: dict[str, str],
        prefix: str,
        metadata: dict[str, str],
        description: str,
        metrics: dict | None = None,
    ) -> Package:
        self._check_environment(group, tags)
        # a base version is its content; a fine-tune version its content at its write-once prefix (not the token an
        # earlier loraops derived from the content and the job, whose package points at the job's output)
        identity = metadata.get(Metadata.CONTENT_DIGEST, "") + ("" if prefix.startswith(s3_layout.BASE) else prefix)
        request: dict[str, Any] = {
            "ModelPackageGroupName": group,
            "ClientToken": client_token(group, identity),
            "ModelPackageDescription": description[:1024],
            "InferenceSpecification": {
                "Containers": [
                    {
                        "Image": self.image,
                        "ModelDataSource": s3_layout.model_data_source(s3_layout.s3_uri(self.bucket, prefix)),
                    }
                ],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
            "ModelApprovalStatus": self.approval_status(tags),
            "CustomerMetadataProperties": {k: v[:1024] for k, v in metadata.items() if v},  # no empty values
        }
        if metrics:
            request["ModelMetrics"] = metrics
        arn = self.sagemaker.create_model_package(**request)["ModelPackageArn"]
        return self._package(self.sagemaker.describe_model_package(ModelPackageName=arn))

    def _register_once(self, group: str, key: str, value: str, create, prefix: str | None = None) -> Package:
        """``create()`` unless a package of ``group`` has metadata ``key`` = ``value`` (and serves ``prefix``); one
        registration at a time per content through a claim object (conditional write), the others wait for its
        package and return it."""
        claim = s3_layout.registration_claim(group, hashlib.sha256(f"{key}={value}".encode()).hexdigest())
        deadline, delay = time.monotonic() + CLAIM_WAIT_SECONDS, 0.05
        while True:
            if self._claim(claim):
                try:
                    # a registration that held the claim before ours may have finished: look again under the claim
                    return self._find(group, key, value, prefix=prefix) or create()
                finally:
                    self.s3.delete_object(Bucket=self.bucket, Key=claim)
            if found := self._find(group, key, value, prefix=prefix):
                return found
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"another registration of {value} in {group} holds s3://{self.bucket}/{claim} and has not "
                    "finished; run again later"
                )
            time.sleep(delay)  # waiting for the other registration's package (bounded by the claim's lease)
            delay = min(delay * 2, 2.0)

    def _claim(self, key: str) -> bool:
        """Write the claim object if it is absent (or stale: older than the lease); True when this call holds it."""
        body = json.dumps({"claimed_at": time.time()}).encode()
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
            return True
        except self.s3.exceptions.ClientError as error:
            if not is_precondition_failure(error):
                raise
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return False  # released in between: the next round claims it
        age = time.time() - head["LastModified"].timestamp()
        if age < CLAIM_LEASE_SECONDS:
            return False
        try:  # take over a stale claim, only if it is still the one seen (compare-and-swap on its ETag)
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfMatch=head["ETag"])
            return True
        except self.s3.exceptions.ClientError:
            return False

    def register_copy(
        self, group: str, prefix: str, metadata: dict[str, str], description: str, metrics: dict | None = None
    ) -> Package:
        """Register bytes copied in from another environment (:mod:`loraops.promotion`) at ``prefix``: one package
        per ``metadata["contentDigest"]`` in ``group``, through the same lookup and claim as :meth:`register_base`."""
        tags, digest = self.group_tags(group), metadata[Metadata.CONTENT_DIGEST]
        create = lambda: self._create(group, tags, prefix, metadata, description, metrics)  # noqa: E731
        return self._find(group, Metadata.CONTENT_DIGEST, digest) or self._register_once(
            group, Metadata.CONTENT_DIGEST, digest, create
        )
