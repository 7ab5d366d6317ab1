"""Promote an approved package from one environment (staging) into another (prod) without leaving prod's VPC-only
bucket policy: the bytes are copied inside S3, never through the caller, and registered with lineage.

1. **refuse** what is not the source environment's (its ARN's account and region, its bytes in the source bucket,
   under a registered prefix), not ``Approved``, or has no approved base in the target (fine-tunes);
2. **pin and verify**: note each object's version, check the bytes against the package's registered digests
   (:meth:`loraops.registry.Registry.verify_content`), and refuse if any object changed meanwhile;
3. **copy once**: every object goes to the same key in the target bucket (the same content-addressed prefix under
   ``base/``) as a multipart upload whose parts are ``UploadPartCopy`` calls of the pinned version, completed with
   ``If-None-Match: *``: S3 copies the bytes, the write-once bucket policy is satisfied, nothing is ever replaced (a
   key already holding the same digest is kept; other bytes are an error). The manifest goes last;
4. **register** in the target's group of the same name, through the registry's lookup and claim (one package per
   content digest, also when promotions race), with the target's approval policy (``PendingManualApproval`` in a
   manual environment) and the lineage: ``sourcePackageArn``, ``sourceEnvironment``, ``contentDigest``.

A promotion refused in step 1 or 2 writes nothing. One cut short in step 3 leaves objects under their final keys but
no package; promoting again finishes it.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from loraops import s3_layout
from loraops.artifacts import DIGEST_METADATA, is_precondition_failure, stored_digest
from loraops.manifest import BASE_MANIFEST, EVALUATION_FILE, MANIFEST_FILE, Manifest, strict_json
from loraops.naming import (
    TAG_BASE_GROUP,
    TAG_MODEL_TYPE,
    TAG_OUTPUT_MODE,
    Metadata,
    ModelType,
)
from loraops.packages import APPROVED, Package, RegistryError
from loraops.registration import evaluation_metrics
from loraops.registry import Registry

#: Bytes per ``UploadPartCopy`` (S3: 5 MiB to 5 GiB per part, at most 10,000 parts).
COPY_PART = 1024**3
#: Parts of one object copied at once (each is a server-side copy: the caller moves no bytes).
COPY_THREADS = 8
_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):model-package/"
    r"(?P<group>[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62})/(?P<version>\d+)$"
)


class PromotionError(RegistryError):
    """The package cannot be promoted; nothing was written."""


@dataclass(frozen=True)
class SourceEnvironment:
    """Where promotions come from: the environment's name, account and region (its registry's bucket)."""

    name: str
    account: str
    region: str


def parse_package_arn(arn: str) -> dict[str, str]:
    """``region``, ``account``, ``group``, ``version`` of a versioned model package ARN, or :class:`PromotionError`."""
    match = _PACKAGE_ARN.match(arn)
    if not match:
        raise PromotionError(f"{arn!r} is not a versioned model package ARN (...:model-package/<group>/<version>)")
    return match.groupdict()


@dataclass
class Promotion:
    """Promotions from ``source`` (the source environment's registry, read only) into ``target``."""

    source: Registry
    target: Registry
    origin: SourceEnvironment

    def promote(self, package_arn: str) -> Package:
        """The target's package for the approved source package ``package_arn`` (the one already there, if any)."""
        package = self._approved_source_package(package_arn)
        digest = package.metadata.get(Metadata.CONTENT_DIGEST, "")
        if not digest:
            raise PromotionError(f"{package_arn} records no content digest; register it again before promoting it")
        prefix = package.model_data_prefix
        tags = self.target.group_tags(package.group)
        self._check_kind(package, tags)
        if found := self.target.find(package.group, Metadata.CONTENT_DIGEST, digest):
            return found
        metadata = {
            **package.metadata,
            Metadata.SOURCE_PACKAGE_ARN: package.arn,
            Metadata.SOURCE_ENVIRONMENT: self.origin.name,
            Metadata.CONTENT_DIGEST: digest,
        }
        if prefix.startswith(s3_layout.BASE):
            manifest_file = BASE_MANIFEST
        else:
            manifest_file = MANIFEST_FILE
            metadata[Metadata.BASE_PACKAGE_ARN] = self._target_base(package, tags).arn
            metadata[Metadata.IMAGE] = self.target.image
            metadata[Metadata.MANIFEST] = s3_layout.s3_uri(self.target.bucket, prefix + MANIFEST_FILE)
        pinned = self._verified_objects(package)
        manifest_key = prefix + manifest_file
        manifest_files, manifest_digest = self._manifest_files(manifest_key, pinned)
        digests = {prefix + name: digest for name, digest in manifest_files.items()}
        digests[manifest_key] = manifest_digest
        if archive := package.metadata.get(Metadata.ADAPTER_ARCHIVE):  # verify_content checked it against archiveDigest
            digests[prefix + archive] = package.metadata.get(Metadata.ARCHIVE_DIGEST, "")
        if set(digests) != set(pinned):
            raise PromotionError(f"s3://{self.source.bucket}/{prefix}: the objects are not the manifest's files")
        held = {key for key in pinned if self._existing(key, digests[key])}  # other bytes: refused before any write
        for key in sorted(set(pinned) - held, key=lambda k: (k == manifest_key, k)):  # the manifest last
            self._copy_once(key, *pinned[key], digests[key])
        files = {key[len(prefix) :] for key in pinned}
        metrics = None
        if EVALUATION_FILE in files and manifest_file == MANIFEST_FILE:
            metrics = evaluation_metrics(self.target.bucket, prefix)
        description = f"{package.group} v{package.version} promoted from {self.origin.name}"
        return self.target.register_copy(package.group, prefix, metadata, description, metrics)

    # ---------------------------------------------------------------------------------------------- checks
    def _approved_source_package(self, package_arn: str) -> Package:
        parts = parse_package_arn(package_arn)
        origin = self.origin
        if (parts["account"], parts["region"]) != (origin.account, origin.region):
            raise PromotionError(
                f"{package_arn} is a package of account {parts['account']} in {parts['region']}; promotions come "
                f"from {origin.name} (account {origin.account} in {origin.region})"
            )
        package = self.source.describe(package_arn)
        if not package.model_data_uri.startswith(f"s3://{self.source.bucket}/"):
            raise PromotionError(
                f"{package_arn} serves {package.model_data_uri or 'nothing'}, not {origin.name}'s bucket "
                f"{self.source.bucket}"
            )
        if not package.model_data_prefix.startswith(s3_layout.VERSION_PREFIXES):
            raise PromotionError(
                f"{package_arn} serves {package.model_data_uri}, outside the write-once version prefixes "
                f"({', '.join(s3_layout.VERSION_PREFIXES)}); run: loraops models migrate {package_arn}"
            )
        if package.deleting or package.status != APPROVED:
            status = "being deleted" if package.deleting else package.status or "without a status"
            raise PromotionError(f"{package_arn} is {status} in {origin.name}; only Approved packages are promoted")
        return package

    def _check_kind(self, package: Package, tags: dict[str, str]) -> None:
        """The target group of the same name keeps the same kind of model."""
        is_base = package.model_data_prefix.startswith(s3_layout.BASE)
        if is_base and tags.get(TAG_MODEL_TYPE) != ModelType.BASE.value:
            raise PromotionError(f"{package.arn} is a base model; group {package.group} here holds other models")
        mode = package.metadata.get(Metadata.OUTPUT_MODE)
        if not is_base and tags.get(TAG_OUTPUT_MODE) != mode:
            raise PromotionError(
                f"{package.arn} is a {mode or '?'} fine-tune; group {package.group} "
                f"here holds {tags.get(TAG_OUTPUT_MODE) or 'other'} models"
            )

    def _target_base(self, package: Package, tags: dict[str, str]) -> Package:
        weights = package.metadata.get(Metadata.BASE_WEIGHTS_DIGEST, "")
        base = (
            self.target.find(tags.get(TAG_BASE_GROUP, ""), Metadata.WEIGHTS_DIGEST, weights, status=APPROVED)
            if weights
            else None
        )
        if base is None:
            raise PromotionError(
                f"{package.arn} was trained on base weights {weights or '(unrecorded)'}, which have no approved "
                f"package in {tags.get(TAG_BASE_GROUP)} here: promote its base and approve it first"
            )
        return base

    def _verified_objects(self, package: Package) -> dict[str, tuple[str | None, int]]:
        """Key -> (version id, size) of every object at the package's prefix, the versions whose bytes
        :meth:`Registry.verify_content` checked (refused if any object changed while it read them)."""
        before = self._versions(package.model_data_prefix)
        try:
            self.source.verify_content(package)
        except RegistryError as error:
            raise PromotionError(f"{package.arn} fails digest verification in {self.origin.name}: {error}") from None
        if self._versions(package.model_data_prefix) != before:
            raise PromotionError(f"s3://{self.source.bucket}/{package.model_data_prefix} changed while it was verified")
        return {key: (version, size) for key, (version, size, _) in before.items()}

    def _versions(self, prefix: str) -> dict[str, tuple[str | None, int, str]]:
        """Key -> (version id, size, ETag) of the objects at ``prefix`` (no version id in an unversioned bucket)."""
        result = {}
        for item in self.source.objects(prefix):
            head = self.source.s3.head_object(Bucket=self.source.bucket, Key=item["Key"])
            version = head.get("VersionId")
            result[item["Key"]] = (None if version in (None, "null") else version, head["ContentLength"], head["ETag"])
        return result

    def _manifest_files(self, key: str, pinned: dict[str, tuple[str | None, int]]) -> tuple[dict[str, str], str]:
        """The files the pinned manifest lists, with their digests, and the manifest's own digest. A fine-tune's
        manifest is read through :class:`Manifest`; a base's (``loraops-base.json``, whose earliest form lacks
        fields later ones carry) only for its ``files``."""
        version = pinned.get(key, (None, 0))[0]
        body = self.source.s3.get_object(
            Bucket=self.source.bucket, Key=key, **({"VersionId": version} if version else {})
        )["Body"].read()
        where = f"s3://{self.source.bucket}/{key}"
        try:
            if key.endswith("/" + MANIFEST_FILE):
                files = Manifest.from_json(body, where).files
            else:
                data = strict_json(body)
                files = data.get("files") if isinstance(data, dict) else None
        except ValueError as error:  # ManifestError is a ValueError
            raise PromotionError(f"{where}: {error}") from None
        return dict(files or {}), f"sha256:{hashlib.sha256(body).hexdigest()}"

    # ------------------------------------------------------------------------------------------------ copy
    def _copy_once(self, key: str, version: str | None, size: int, digest: str) -> bool:
        """Copy ``key`` (at ``version``, ``size`` bytes) from the source bucket to the same key of the target bucket,
        inside S3. True when copied; False when a concurrent promotion wrote the same ``digest`` there first."""
        s3, bucket = self.target.s3, self.target.bucket
        source = {"Bucket": self.source.bucket, "Key": key, **({"VersionId": version} if version else {})}
        ranges = [(start, min(start + COPY_PART, size) - 1) for start in range(0, size, COPY_PART)]
        # no ChecksumAlgorithm: a multipart SHA-256 is a checksum of checksums, not the file's digest; the digest is
        # recorded in the metadata, as write_once records it
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata={DIGEST_METADATA: digest})["UploadId"]

        def part(number: int) -> dict[str, Any]:
            extra = {"CopySourceRange": "bytes={}-{}".format(*ranges[number - 1])} if len(ranges) > 1 else {}
            result = s3.upload_part_copy(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, CopySource=source, **extra
            )["CopyPartResult"]
            return {"PartNumber": number, "ETag": result["ETag"]}

        try:
            with ThreadPoolExecutor(COPY_THREADS) as pool:
                parts = list(pool.map(part, range(1, max(len(ranges), 1) + 1)))
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
            return True
        except Exception as error:  # botocore's ClientError
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            if not is_precondition_failure(error):
                raise
        if not self._existing(key, digest):  # a concurrent promotion wrote it first
            raise PromotionError(f"s3://{bucket}/{key} appeared during the copy without its digest")
        return False

    def _existing(self, key: str, digest: str) -> bool:
        """Whether the target already holds ``key`` with ``digest``; :class:`PromotionError` if it holds other bytes."""
        try:
            existing = stored_digest(self.target.s3, self.target.bucket, key)
        except self.target.s3.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        if existing != digest:
            raise PromotionError(
                f"s3://{self.target.bucket}/{key} already holds other bytes ({existing or 'no recorded digest'}, "
                f"not {digest}); promoted keys are never replaced"
            )
        return True
