"""SageMaker Model Registry operations (boto3): register base models (put under ``base/`` by
:mod:`loraops.base_import`), register fine-tunes with their lineage, approve or reject, read the base -> collection
-> group -> version tree, and what the storage costs.

Every registration checks before it writes: a bad input raises :class:`RegistryError` and registers nothing.
What is checked: the files the manifest lists lie at the prefix (a base's with their recorded sizes), every digest S3
stores for one of them (its SHA-256 checksum, where it keeps one) equals the manifest's, every ``.safetensors``
header parses and matches its file's size, a fine-tune's base is the target group's base, and the
group belongs to this environment (its ``loraops:environment`` tag is the artifact bucket's).

A fine-tune is copied at registration out of its job's output (which the job's role may rewrite) into the write-once
``finetuned/<group>/<content hex>/``, and its package points there (an adapter's also packed as ``adapter.tar.gz``).

One version per content, also when registrations race: the same bytes (content digest), a base's or a fine-tune's,
give back the package already registered. Three mechanisms, none depending on timing: a lookup of a package
with the same digest; a registration claim, an S3 object under ``registrations/`` written with a conditional write
(``If-None-Match``), so one registration at a time creates the package while the others wait for it and return it;
and ``ClientToken`` on ``CreateModelPackage`` derived from the digest (SageMaker's own idempotency; the emulator
ignores it).

The approval status of a new package comes from the environment's policy (``APPROVAL`` of the registration
functions) and the group's ``loraops:approvalPolicy`` tag: auto-approved only when both say ``auto``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

from loraops import s3_layout
from loraops.artifacts import (
    ArtifactError,
    PendingCopy,
    adapter_archive,
    check_safetensors,
    is_precondition_failure,
    start_copy,
    stored_digest,
    write_once,
)
from loraops.collections import PATH_TAG_PREFIX
from loraops.manifest import BASE_MANIFEST, EVALUATION_FILE, MANIFEST_FILE, WEIGHT_SUFFIXES, content_digest
from loraops.naming import (
    TAG_APPROVAL_POLICY,
    TAG_BASE_GROUP,
    TAG_ENVIRONMENT,
    TAG_MODEL_TYPE,
    TAG_OUTPUT_MODE,
    Metadata,
    ModelType,
    OutputMode,
    base_group_name,
)

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
#: Hyperparameters copied into a package's metadata (the manifest, linked from it, holds them all).
KEY_HYPERPARAMETERS = (
    "lora_r",
    "lora_alpha",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "quantization",
    "tokens_per_step",
    "output_mode",
)


#: A registration claim older than this is left by a registration that died: it may be taken over.
CLAIM_LEASE_SECONDS = 600
#: How long a registration waits for another one's package of the same content.
CLAIM_WAIT_SECONDS = CLAIM_LEASE_SECONDS + 60


class RegistryError(ValueError):
    """The registration or approval cannot proceed; nothing was written."""


def client_token(group: str, identity: str) -> str:
    """``CreateModelPackage``'s ``ClientToken`` (1-36 of ``[a-zA-Z0-9-]``) for one content in one group."""
    return hashlib.sha256(f"{group}\0{identity}".encode()).hexdigest()[:36]


@dataclass(frozen=True)
class Package:
    arn: str
    group: str
    version: int
    status: str
    metadata: dict[str, str] = field(default_factory=dict)
    model_data_prefix: str = ""
    model_data_uri: str = ""
    deleting: bool = False  # ModelPackageStatus Deleting: on its way out of the registry

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> Package:
        """A package from DescribeModelPackage's answer (or a state-change event's detail, which has its shape)."""
        source = description.get("InferenceSpecification", {}).get("Containers", [{}])[0].get("ModelDataSource", {})
        uri = source.get("S3DataSource", {}).get("S3Uri", "")
        return cls(
            arn=description["ModelPackageArn"],
            group=description.get("ModelPackageGroupName", ""),
            version=int(description.get("ModelPackageVersion", 0)),
            status=description.get("ModelApprovalStatus", ""),
            metadata=dict(description.get("CustomerMetadataProperties", {})),
            model_data_prefix=uri.split("/", 3)[3] if uri.count("/") >= 3 else "",  # s3://bucket/<prefix>
            model_data_uri=uri,
            deleting=description.get("ModelPackageStatus") == "Deleting",
        )


@dataclass
class Registry:
    """The registry of one environment: its SageMaker and S3 clients, artifact bucket and approval policy.

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
        if self.approval not in (None, "auto", "manual"):
            raise RegistryError(f"approval must be auto or manual, got {self.approval!r}")
        if not self.image:
            from loraops.images import image_uri

            self.image = image_uri("serving", self.region)

    @classmethod
    def from_environment(cls) -> Registry:
        """The registry a deployed function works in: ``ARTIFACT_BUCKET``, ``APPROVAL``, ``AWS_REGION``."""
        import os

        import boto3

        region = os.environ["AWS_REGION"]
        return cls(
            boto3.client("sagemaker", region_name=region),
            boto3.client("s3", region_name=region),
            os.environ["ARTIFACT_BUCKET"],
            region,
            os.environ.get("APPROVAL") or None,
        )

    # ----------------------------------------------------------------------------------------------- base
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

    # ------------------------------------------------------------------------------------------ fine-tune
    def register_finetune(
        self, group: str, model_prefix: str, training_job: str, base_package_arn: str | None = None
    ) -> Package:
        """Register a training job's uncompressed output (``model_prefix``, a key under the bucket) in ``group``,
        with its lineage; refused unless its base is an approved base package of this environment.

        The package never points at the job's output, which the job's role may overwrite: the files the manifest
        lists (and the manifest) are copied server-side, each checked against its digest, into the write-once
        ``finetuned/<group>/<content hex>/`` (an adapter's also packed as ``adapter.tar.gz`` there), and the package
        points at that prefix. The same bytes again (the event delivered twice, or another job that wrote the same
        files) give the package already registered for them. ``base_package_arn``: the base, where the manifest
        does not name it (a migration passes the one its earlier package recorded)."""
        if not model_prefix.endswith("/"):
            raise RegistryError(f"model prefix {model_prefix!r} must end with '/' (an S3Prefix model data source)")
        # the bytes checked are the bytes copied: the job's role may rewrite its manifest meanwhile
        manifest, manifest_bytes = self._read_json(model_prefix + MANIFEST_FILE, "training manifest")
        evaluation = self.read_json(model_prefix + EVALUATION_FILE, "evaluation report")
        for key in ("output_mode", "base_model_id", "base_weights_digest", "dataset_digest", "files"):
            if key not in manifest:
                raise RegistryError(f"{model_prefix}{MANIFEST_FILE}: no '{key}'")
        if "language_modeling_metrics" not in evaluation:
            raise RegistryError(f"{model_prefix}{EVALUATION_FILE}: not a ModelMetrics statistics report")
        files: dict[str, str] = manifest["files"]
        if not files or MANIFEST_FILE in files or any(not _relative(n) for n in files):
            raise RegistryError(f"{model_prefix}{MANIFEST_FILE}: 'files' must name the artifact's other files")
        if EVALUATION_FILE not in files:
            raise RegistryError(f"{model_prefix}{MANIFEST_FILE}: 'files' does not list {EVALUATION_FILE}")
        listed = {o["Key"][len(model_prefix) :]: o["Size"] for o in self.objects(model_prefix)}
        if missing := sorted(set(files) - set(listed)):
            raise RegistryError(f"{model_prefix}: files the manifest lists are missing: {missing}")
        tags = self._group_tags(group)
        mode = OutputMode(manifest["output_mode"])
        if tags.get(TAG_OUTPUT_MODE) != mode.value:
            raise RegistryError(f"group {group} holds {tags.get(TAG_OUTPUT_MODE)} models, the job wrote {mode.value}")
        manifest_base = base_group_name(manifest["base_model_id"])
        if tags.get(TAG_BASE_GROUP) != manifest_base:
            raise RegistryError(
                f"group {group} holds fine-tunes of {tags.get(TAG_BASE_GROUP)}; the job's manifest names base "
                f"{manifest['base_model_id']} ({manifest_base})"
            )
        sizes = {n: listed[n] for n in files}
        self._check_objects(model_prefix, sizes, files)
        base = self._finetune_base(manifest.get("base_model_package_arn") or base_package_arn, manifest)
        self._check_environment(manifest_base, self._group_tags(manifest_base))
        content = content_digest(files, model_prefix)
        prefix = s3_layout.finetuned_prefix(group, content)
        if found := self._find(group, Metadata.CONTENT_DIGEST, content, prefix=prefix):
            return found
        hyperparameters = manifest.get("hyperparameters", {})
        metadata = {
            Metadata.BASE_PACKAGE_ARN: base.arn,
            Metadata.BASE_CONTENT_DIGEST: base.metadata.get(Metadata.CONTENT_DIGEST, ""),
            Metadata.BASE_WEIGHTS_DIGEST: manifest["base_weights_digest"],
            Metadata.DATASET_NAME: manifest.get("dataset_name", ""),
            Metadata.DATASET_DIGEST: manifest["dataset_digest"],
            Metadata.TRAINING_JOB: training_job,
            Metadata.OUTPUT_MODE: mode.value,
            Metadata.CODE_VERSION: manifest.get("code_version", ""),
            Metadata.IMAGE: self.image,
            Metadata.CONTENT_DIGEST: content,
            Metadata.MANIFEST: s3_layout.s3_uri(self.bucket, prefix + MANIFEST_FILE),
            Metadata.EVAL_LOSS: str(manifest.get("metrics", {}).get("validation_loss", "")),
            **{
                f"{Metadata.HYPERPARAMETER_PREFIX}{k}": str(hyperparameters[k])
                for k in KEY_HYPERPARAMETERS
                if k in hyperparameters
            },
        }
        metrics = {
            "ModelQuality": {
                "Statistics": {
                    "ContentType": "application/json",
                    "S3Uri": s3_layout.s3_uri(self.bucket, prefix + EVALUATION_FILE),
                }
            }
        }

        def copy_and_create() -> Package:
            metadata.update(self._place_finetune(model_prefix, prefix, files, sizes, mode, manifest_bytes))
            return self._create(group, tags, prefix, metadata, f"{training_job}: {mode.value}", metrics)

        return self._register_once(group, Metadata.CONTENT_DIGEST, content, copy_and_create, prefix=prefix)

    def _place_finetune(
        self, source: str, prefix: str, files: dict[str, str], sizes: dict[str, int], mode: OutputMode, manifest: bytes
    ) -> dict[str, str]:
        """Copy a job's files (each checked against ``files``' digest) and its manifest into the write-once
        ``prefix``; for an adapter also write its archive. Returns the metadata that names the archive."""
        pending: list[PendingCopy] = []
        try:
            for name in sorted(files):  # every file checked before any is completed: a refusal leaves nothing
                pending.append(start_copy(self.s3, self.bucket, source + name, prefix + name, files[name]))
        except BaseException as error:
            for copy in pending:
                copy.abort()
            if isinstance(error, ArtifactError):
                raise RegistryError(str(error)) from None
            raise
        for index, copy in enumerate(pending):
            try:
                copy.complete()
            except BaseException as error:
                for rest in pending[index + 1 :]:
                    rest.abort()
                if isinstance(error, ArtifactError):
                    raise RegistryError(str(error)) from None
                raise
        try:
            write_once(
                self.s3, self.bucket, prefix + MANIFEST_FILE, io.BytesIO(manifest), len(manifest), _sha256(manifest)
            )
        except ArtifactError:
            # another job's manifest for the same files (its registration stopped before its package): it stays
            if self.read_json(prefix + MANIFEST_FILE, "manifest").get("files") != files:
                raise RegistryError(f"s3://{self.bucket}/{prefix}{MANIFEST_FILE} lists other files") from None
        if mode is not OutputMode.ADAPTER:
            return {}
        openers = {n: (lambda key=prefix + n: self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]) for n in files}
        archive, size, digest = adapter_archive(openers, sizes)
        with archive:
            try:
                write_once(self.s3, self.bucket, prefix + s3_layout.ADAPTER_ARCHIVE, archive, size, digest)
            except ArtifactError as error:
                raise RegistryError(str(error)) from None
        return {Metadata.ADAPTER_ARCHIVE: s3_layout.ADAPTER_ARCHIVE, Metadata.ARCHIVE_DIGEST: digest}

    def _finetune_base(self, arn: str | None, manifest: dict[str, Any]) -> Package:
        """The approved base package a job trained on: the one its manifest names (the workflow passes the package
        it resolved), which must be of the manifest's base model and have its weights; else (a manifest without an
        ARN) the one approved base version with those weights. Two versions may share weights and differ in other
        files (config, tokenizer): then only the ARN can tell them apart."""
        group, weights = base_group_name(manifest["base_model_id"]), manifest["base_weights_digest"]
        if arn:
            base = self.describe(arn)
            if base.group != group or base.metadata.get(Metadata.WEIGHTS_DIGEST) != weights:
                raise RegistryError(
                    f"the manifest's base package {arn} is {base.group} with weights "
                    f"{base.metadata.get(Metadata.WEIGHTS_DIGEST) or '(unrecorded)'}, not {group} with {weights}"
                )
            if base.status != APPROVED:
                raise RegistryError(f"the manifest's base package {arn} is {base.status or 'not approved'}")
            return base
        candidates = [
            p
            for s in self._summaries(group)
            if s.get("ModelApprovalStatus") == APPROVED
            and (p := self._package(self.sagemaker.describe_model_package(ModelPackageName=s["ModelPackageArn"])))
            and p.metadata.get(Metadata.WEIGHTS_DIGEST) == weights
        ]
        if not candidates:
            raise RegistryError(
                f"base weights {weights} of {manifest['base_model_id']} match no approved base package; register "
                "and approve the base first"
            )
        if len({p.metadata.get(Metadata.CONTENT_DIGEST) for p in candidates}) > 1:
            raise RegistryError(
                f"{len(candidates)} approved versions of {group} share weights {weights} "
                f"({', '.join(p.arn for p in candidates)}) and the manifest names no base_model_package_arn"
            )
        return candidates[0]

    # ------------------------------------------------------------------------------------------- migration
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

    def needs_migration(self, package: Package) -> bool:
        """Whether :meth:`verify_content` refuses ``package`` for want of :meth:`migrate`."""
        if not package.metadata.get(Metadata.CONTENT_DIGEST):
            return True
        return bool(package.metadata.get(Metadata.OUTPUT_MODE)) and not package.model_data_prefix.startswith(
            s3_layout.FINETUNED
        )

    def check_finetune_target(self, group: str, mode: OutputMode, model_id: str) -> Package:
        """Before a fine-tune starts: ``group`` exists and keeps ``mode`` models of ``model_id``, and the base has
        an approved package (returned: the newest, which the workflow will train)."""
        tags = self._group_tags(group)
        if tags.get(TAG_OUTPUT_MODE) != mode.value:
            raise RegistryError(f"group {group} holds {tags.get(TAG_OUTPUT_MODE)} models, not {mode.value}")
        if tags.get(TAG_BASE_GROUP) != base_group_name(model_id):
            raise RegistryError(f"group {group} holds fine-tunes of {tags.get(TAG_BASE_GROUP)}, not of {model_id}")
        approved = [s for s in self._summaries(base_group_name(model_id)) if s.get("ModelApprovalStatus") == APPROVED]
        if not approved:
            raise RegistryError(f"{model_id} has no approved base package: import, register and approve one first")
        newest = max(approved, key=lambda s: s["CreationTime"])
        return self._package(self.sagemaker.describe_model_package(ModelPackageName=newest["ModelPackageArn"]))

    def describe(self, package_arn: str) -> Package:
        """One package version, with its lineage metadata and model data prefix."""
        from botocore.exceptions import ParamValidationError  # here: loraops_serving imports this module, boto-free

        try:
            return self._package(self.sagemaker.describe_model_package(ModelPackageName=package_arn))
        except self.sagemaker.exceptions.ClientError as error:
            message = error.response.get("Error", {}).get("Message", str(error))
            raise RegistryError(f"model package {package_arn}: {message}") from None
        except ParamValidationError as error:
            raise RegistryError(f"model package {package_arn!r}: {error}") from None

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
        files = self.read_json(prefix + manifest_file, "manifest").get("files") or {}
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

    def check_in_environment(self, package: Package) -> None:
        """Raise unless ``package`` is this environment's: its group carries this environment's tag and its
        artifacts lie in this environment's bucket."""
        self._check_environment(package.group, self._group_tags(package.group))
        uri = package.model_data_uri
        if uri and not uri.startswith(f"s3://{self.bucket}/"):
            raise RegistryError(f"{package.arn} serves {uri}, outside this environment's bucket {self.bucket}")

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

    def _check_environment(self, group: str, tags: dict[str, str]) -> None:
        if self.environment is not None and tags.get(TAG_ENVIRONMENT) != self.environment:
            raise RegistryError(
                f"group {group} belongs to environment {tags.get(TAG_ENVIRONMENT) or '(none)'}, not to "
                f"{self.environment} (bucket {self.bucket})"
            )

    # ----------------------------------------------------------------------------------------- decisions
    def decide(self, package_arn: str, approve: bool, reason: str = "") -> Package:
        """Approve or reject one package version (in manual environments only the approver role may)."""
        status = APPROVED if approve else REJECTED
        current = self.describe(package_arn)
        self.check_in_environment(current)
        request = {
            "ModelPackageArn": package_arn,
            "ModelApprovalStatus": status,
            "ApprovalDescription": reason or f"{status} with loraops",
        }
        if current.metadata:
            # SageMaker keeps the metadata on an approval; moto 5.2.5 drops it unless it is sent again (a no-op on
            # AWS), so the lineage survives in both.
            request["CustomerMetadataProperties"] = current.metadata
        self.sagemaker.update_model_package(**request)
        return self.describe(package_arn)

    # ---------------------------------------------------------------------------------------------- read
    def tree(self) -> list[dict[str, Any]]:
        """Base models, each with its collections, their groups and every version (status, dataset, eval loss,
        bytes), from the groups' tags (what the collections select) and the packages."""
        groups = {}
        for page in self.sagemaker.get_paginator("list_model_package_groups").paginate():
            for group in page["ModelPackageGroupSummaryList"]:
                tags = self._group_tags(group["ModelPackageGroupName"])
                if self.environment is None or tags.get(TAG_ENVIRONMENT) == self.environment:
                    groups[group["ModelPackageGroupName"]] = tags  # other environments' groups are not ours
        bases = sorted(name for name, tags in groups.items() if tags.get(TAG_MODEL_TYPE) == ModelType.BASE.value)
        result = []
        for base in bases:
            lines = sorted(name for name, tags in groups.items() if tags.get(TAG_BASE_GROUP) == base)
            result.append(
                {
                    "base": base,
                    "collections": sorted(
                        v
                        for t in (groups[g] for g in [base, *lines])
                        for k, v in t.items()
                        if k.startswith(PATH_TAG_PREFIX)
                    ),
                    "groups": [self._group_view(name, groups[name]) for name in [base, *lines]],
                }
            )
        return result

    def storage_report(self) -> dict[str, Any]:
        """Bytes held per base and per fine-tuned variant, and what keeping adapters separate saved."""
        report = []
        for base in self.tree():
            base_bytes = max((v["bytes"] for v in base["groups"][0]["versions"]), default=0)
            adapter_versions, merged_versions = (
                [v for g in base["groups"][1:] if g["mode"] == mode for v in g["versions"]]
                for mode in (OutputMode.ADAPTER, OutputMode.MERGED)
            )
            adapters = sum(v["bytes"] for v in adapter_versions)
            merged = sum(v["bytes"] for v in merged_versions)
            # one merged variant's size: measured where the registry holds one, else the base's (a merged model has
            # the base's tensors)
            merged_size = merged // len(merged_versions) if merged_versions else base_bytes
            if_merged = len(adapter_versions) * merged_size
            report.append(
                {
                    "base": base["base"],
                    "base_bytes": base_bytes,
                    "adapter_variants": len(adapter_versions),
                    "adapter_bytes": adapters,
                    "merged_variants": len(merged_versions),
                    "merged_bytes": merged,
                    # had every adapter been kept merged, each would be a merged model of the size measured above
                    "adapters_if_merged_bytes": if_merged,
                    "saved_by_separate_adapters_bytes": if_merged - adapters,
                }
            )
        return {"bases": report}

    # ------------------------------------------------------------------------------------------- helpers
    def _group_view(self, name: str, tags: dict[str, str]) -> dict[str, Any]:
        versions = []
        for summary in self._summaries(name):
            package = self._package(self.sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"]))
            versions.append(
                {
                    "version": package.version,
                    "status": package.status,
                    "arn": package.arn,
                    "dataset": package.metadata.get(Metadata.DATASET_NAME) or None,
                    "eval_loss": _number(package.metadata.get(Metadata.EVAL_LOSS)),
                    "training_job": package.metadata.get(Metadata.TRAINING_JOB) or None,
                    "content_digest": package.metadata.get(Metadata.CONTENT_DIGEST) or None,
                    "bytes": sum(o["Size"] for o in self.objects(package.model_data_prefix)),
                }
            )
        return {
            "group": name,
            "type": tags.get(TAG_MODEL_TYPE) or None,
            "mode": tags.get(TAG_OUTPUT_MODE) or None,
            "approval_policy": tags.get(TAG_APPROVAL_POLICY) or None,
            "versions": versions,
        }

    def approval_status(self, tags: dict[str, str]) -> str:
        """A new package's status: Approved only where the environment and the group's tag both say auto."""
        auto = tags.get(TAG_APPROVAL_POLICY) == "auto" and self.approval in (None, "auto")
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

    def group_tags(self, group: str) -> dict[str, str]:
        """``group``'s tags, once it is known to be this environment's (:class:`RegistryError` otherwise)."""
        tags = self._group_tags(group)
        self._check_environment(group, tags)
        return tags

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

    def find(self, group: str, key: str, value: str, status: str | None = None) -> Package | None:
        """The first package of ``group`` whose metadata ``key`` is ``value`` (and status ``status``), or None."""
        return self._find(group, key, value, status)

    def _find(
        self, group: str, key: str, value: str, status: str | None = None, prefix: str | None = None
    ) -> Package | None:
        for summary in self._summaries(group):
            if status and summary.get("ModelApprovalStatus") != status:
                continue
            package = self._package(self.sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"]))
            if package.metadata.get(key) == value and prefix in (None, package.model_data_prefix):
                return package
        return None

    def _summaries(self, group: str) -> list[dict[str, Any]]:
        try:
            pages = self.sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group)
            return [s for page in pages for s in page["ModelPackageSummaryList"]]
        except self.sagemaker.exceptions.ClientError as error:
            raise RegistryError(f"model package group {group}: {error}") from None

    def _group_tags(self, group: str) -> dict[str, str]:
        try:
            arn = self.sagemaker.describe_model_package_group(ModelPackageGroupName=group)["ModelPackageGroupArn"]
        except self.sagemaker.exceptions.ClientError:
            raise RegistryError(f"no model package group {group!r} (deploy the registry stack first)") from None
        return {t["Key"]: t["Value"] for t in self.sagemaker.list_tags(ResourceArn=arn).get("Tags", [])}

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        if not prefix:
            return []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o for page in pages for o in page.get("Contents", [])]

    def read_json(self, key: str, what: str) -> dict[str, Any]:
        """A JSON object in the artifact bucket, or a :class:`RegistryError` naming ``what`` is wrong."""
        return self._read_json(key, what)[0]

    def _read_json(self, key: str, what: str) -> tuple[dict[str, Any], bytes]:
        """:meth:`read_json` and the bytes it was parsed from."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.ClientError:
            raise RegistryError(f"no {what} at s3://{self.bucket}/{key}") from None
        try:
            data = json.loads(body, parse_constant=_refuse)
        except ValueError as error:
            raise RegistryError(f"s3://{self.bucket}/{key}: {what} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"s3://{self.bucket}/{key}: {what} is not a JSON object")
        return data, body

    @staticmethod
    def _package(description: dict[str, Any]) -> Package:
        return Package.from_description(description)


def _relative(name: str) -> bool:
    """A manifest's file name is a plain relative path (no ``..``, no leading ``/``)."""
    return bool(name) and not name.startswith("/") and ".." not in name.split("/")


def _sha256(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
