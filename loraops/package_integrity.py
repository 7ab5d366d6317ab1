"""Whether a registered package is still, byte for byte, what was registered, and bringing packages an earlier
loraops registered to what that check needs."""

from __future__ import annotations

import hashlib
from typing import Any

from loraops import s3_layout
from loraops.artifacts import stored_digest
from loraops.finetune_registration import FinetuneRegistration
from loraops.manifest import BASE_MANIFEST, MANIFEST_FILE, content_digest
from loraops.naming import Metadata
from loraops.packages import Package, RegistryError
from loraops.registry_tree import RegistryTree


class PackageIntegrity(FinetuneRegistration, RegistryTree):
    """Content verification before a package is served, and the migrations it may call for."""

    def verify_content(self, package: Package) -> None:
        """Before a package is served: the objects at its prefix are exactly the files it was registered with, byte
        for byte. The manifest's files must give the package's recorded ``contentDigest``; every file's SHA-256 is
        S3's own full-object checksum where S3 holds one, else the digest recorded when the object was written once
        (under the write-once ``base/`` and ``finetuned/`` prefixes); an adapter's archive has its recorded digest.
        A package registered before versions were content-addressed (no ``contentDigest``, or a fine-tune that points
        at its job's output) is refused with the command that migrates it. Raises :class:`RegistryError` naming the
        first difference."""
        recorded = package.metadata.get(Metadata.CONTENT_DIGEST, "")
        migrate = f"run: loraops models migrate {package.arn}"
        if not recorded:
            raise RegistryError(f"{package.arn} records no content digest (an earlier registration); {migrate}")
        if package.model_data_uri and not package.model_data_uri.startswith(f"s3://{self.bucket}/"):
            raise RegistryError(f"{package.arn} serves {package.model_data_uri}, outside the bucket {self.bucket}")
        prefix = package.model_data_prefix
        is_base = prefix.startswith(s3_layout.BASE)
        if not is_base and not prefix.startswith(s3_layout.FINETUNED):
            raise RegistryError(f"{package.arn} serves its job's output {prefix}, which is not write-once; {migrate}")
        manifest_file = BASE_MANIFEST if is_base else MANIFEST_FILE
        if is_base:
            files = self.read_json(prefix + manifest_file, "manifest").get("files") or {}
        else:
            files = self.read_manifest(prefix + manifest_file, "manifest")[0].files
        if content_digest(files, prefix) != recorded:
            raise RegistryError(f"s3://{self.bucket}/{prefix}{manifest_file} no longer lists the registered files")
        archive = package.metadata.get(Metadata.ADAPTER_ARCHIVE)
        expected = set(files) | {manifest_file} | ({archive} if archive else set())
        present = {o["Key"][len(prefix) :] for o in self.objects(prefix)}
        if present != expected:
            extra, missing = sorted(present - expected), sorted(expected - present)
            raise RegistryError(
                f"s3://{self.bucket}/{prefix}: files added {extra} or missing {missing} since registered"
            )
        for name, digest in sorted(files.items()):
            if self._object_digest(prefix + name, trust_recorded=True) != digest:
                raise RegistryError(f"s3://{self.bucket}/{prefix}{name} changed since it was registered ({digest})")
        if archive and self._object_digest(prefix + archive, trust_recorded=True) != package.metadata.get(
            Metadata.ARCHIVE_DIGEST
        ):
            raise RegistryError(f"s3://{self.bucket}/{prefix}{archive} is not the archive registered")

    def _object_digest(self, key: str, trust_recorded: bool) -> str:
        """S3's stored digest where it has one (and the recorded one where ``trust_recorded``), else the bytes'."""
        if stored := stored_digest(self.s3, self.bucket, key, trust_metadata=trust_recorded):
            return stored
        sha = hashlib.sha256()
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        while chunk := body.read(8 * 1024 * 1024):
            sha.update(chunk)
        return f"sha256:{sha.hexdigest()}"

    def needs_migration(self, package: Package) -> bool:
        """Whether :meth:`verify_content` refuses ``package`` for want of :meth:`migrate`."""
        if not package.metadata.get(Metadata.CONTENT_DIGEST):
            return True
        return bool(package.metadata.get(Metadata.OUTPUT_MODE)) and not package.model_data_prefix.startswith(
            s3_layout.FINETUNED
        )

    def migrate(self, package_arn: str) -> dict[str, Any]:
        """Bring a package registered by an earlier loraops to what the deploy path verifies. A fine-tune that
        points at its job's output is registered again from there (copied to its write-once prefix, checked
        against its manifest): a new version, whose approval comes from the group's policy like any other. A base
        without ``contentDigest`` gets it recorded, once every object at its prefix is read and matches the digest
        its ``loraops-base.json`` lists. Anything else is left as it is (``action`` says which)."""
        package = self.describe(package_arn)
        self.check_in_environment(package)
        prefix, mode = package.model_data_prefix, package.metadata.get(Metadata.OUTPUT_MODE)
        result = {"package": package.arn, "group": package.group, "status": package.status}
        if mode and not prefix.startswith(s3_layout.FINETUNED):
            job = package.metadata.get(Metadata.TRAINING_JOB) or f"{package.group}/{package.version}"
            new = self.register_finetune(package.group, prefix, job, package.metadata.get(Metadata.BASE_PACKAGE_ARN))
            return {**result, "action": "copied", "migrated_to": new.arn, "migrated_status": new.status}
        if not mode and not package.metadata.get(Metadata.CONTENT_DIGEST):
            files = self.read_json(prefix + BASE_MANIFEST, "base manifest").get("files") or {}
            for name, digest in sorted(files.items()):
                if self._object_digest(prefix + name, trust_recorded=False) != digest:
                    raise RegistryError(
                        f"s3://{self.bucket}/{prefix}{name} is not the file its import recorded ({digest}); "
                        "import the base again"
                    )
            metadata = {**package.metadata, Metadata.CONTENT_DIGEST: content_digest(files, prefix)}
            # moto 5.2.5 resets the status of an update without one; AWS keeps it either way
            self.sagemaker.update_model_package(
                ModelPackageArn=package.arn, ModelApprovalStatus=package.status, CustomerMetadataProperties=metadata
            )
            return {**result, "action": "recorded", "content_digest": metadata[Metadata.CONTENT_DIGEST]}
        return {**result, "action": "none"}

    def migrate_all(self) -> dict[str, Any]:
        """Every migration this environment needs: groups tagged with an earlier collection path move into the
        SDK-form collections (:func:`loraops.collections.migrate_member_tags`), and every package that
        :meth:`needs_migration` is migrated. Running it again changes nothing."""
        from loraops.collections import migrate_member_tags

        moved, packages = [], []
        for base in self.tree():
            moved += migrate_member_tags(self.sagemaker, base["base"])
            for group in base["groups"]:
                for version in group["versions"]:
                    package = self.describe(version["arn"])
                    if self.needs_migration(package):
                        packages.append(self.migrate(package.arn))
        return {"collection_groups_moved": moved, "packages": packages}
