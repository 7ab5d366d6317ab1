"""Registering a fine-tune with its lineage, and the checks before one starts.

Every registration checks before it writes: a bad input raises :class:`~loraops.packages.RegistryError` and
registers nothing. A fine-tune's base must be an approved base package of the target group's base, and the group
must belong to this environment. It is copied at registration out of its job's output (which the job's role may
rewrite) into the write-once ``finetuned/<group>/<content hex>/``, and its package points there (an adapter's also
packed as ``adapter.tar.gz``)."""

from __future__ import annotations

import hashlib
import io

from loraops import s3_layout
from loraops.adapter_archive import adapter_archive
from loraops.artifacts import ArtifactError, PendingCopy, start_copy, write_once
from loraops.manifest import (
    EVALUATION_FILE,
    LANGUAGE_MODELING_METRICS,
    MANIFEST_FILE,
    VALIDATION_LOSS,
    Manifest,
    content_digest,
)
from loraops.naming import TAG_BASE_GROUP, TAG_OUTPUT_MODE, Metadata, OutputMode, base_group_name
from loraops.packages import APPROVED, Package, RegistryError
from loraops.registration import Registration, evaluation_metrics

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


class FinetuneRegistration(Registration):
    """Fine-tune versions: checked, copied to their write-once prefix and registered with their lineage."""

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
        manifest, manifest_bytes = self.read_manifest(model_prefix + MANIFEST_FILE)
        evaluation = self.read_json(model_prefix + EVALUATION_FILE, "evaluation report")
        if LANGUAGE_MODELING_METRICS not in evaluation:
            raise RegistryError(f"{model_prefix}{EVALUATION_FILE}: not a ModelMetrics statistics report")
        files = manifest.files
        if not files or MANIFEST_FILE in files or any(not _relative(n) for n in files):
            raise RegistryError(f"{model_prefix}{MANIFEST_FILE}: 'files' must name the artifact's other files")
        if EVALUATION_FILE not in files:
            raise RegistryError(f"{model_prefix}{MANIFEST_FILE}: 'files' does not list {EVALUATION_FILE}")
        listed = {o["Key"][len(model_prefix) :]: o["Size"] for o in self.objects(model_prefix)}
        if missing := sorted(set(files) - set(listed)):
            raise RegistryError(f"{model_prefix}: files the manifest lists are missing: {missing}")
        tags = self._group_tags(group)
        mode = manifest.output_mode
        if tags.get(TAG_OUTPUT_MODE) != mode.value:
            raise RegistryError(f"group {group} holds {tags.get(TAG_OUTPUT_MODE)} models, the job wrote {mode.value}")
        manifest_base = base_group_name(manifest.base_model_id)
        if tags.get(TAG_BASE_GROUP) != manifest_base:
            raise RegistryError(
                f"group {group} holds fine-tunes of {tags.get(TAG_BASE_GROUP)}; the job's manifest names base "
                f"{manifest.base_model_id} ({manifest_base})"
            )
        sizes = {n: listed[n] for n in files}
        self._check_objects(model_prefix, sizes, files)
        base = self._finetune_base(manifest.base_model_package_arn or base_package_arn, manifest)
        self._check_environment(manifest_base, self._group_tags(manifest_base))
        content = content_digest(files, model_prefix)
        prefix = s3_layout.finetuned_prefix(group, content)
        if found := self._find(group, Metadata.CONTENT_DIGEST, content, prefix=prefix):
            return found
        hyperparameters = manifest.hyperparameters
        metadata = {
            Metadata.BASE_PACKAGE_ARN: base.arn,
            Metadata.BASE_CONTENT_DIGEST: base.metadata.get(Metadata.CONTENT_DIGEST, ""),
            Metadata.BASE_WEIGHTS_DIGEST: manifest.base_weights_digest,
            Metadata.DATASET_NAME: manifest.dataset_name,
            Metadata.DATASET_DIGEST: manifest.dataset_digest,
            Metadata.TRAINING_JOB: training_job,
            Metadata.OUTPUT_MODE: mode.value,
            Metadata.CODE_VERSION: manifest.code_version,
            Metadata.IMAGE: self.image,
            Metadata.CONTENT_DIGEST: content,
            Metadata.MANIFEST: s3_layout.s3_uri(self.bucket, prefix + MANIFEST_FILE),
            Metadata.EVAL_LOSS: str(manifest.metrics.get(VALIDATION_LOSS, "")),
            **{
                f"{Metadata.HYPERPARAMETER_PREFIX}{k}": str(hyperparameters[k])
                for k in KEY_HYPERPARAMETERS
                if k in hyperparameters
            },
        }
        metrics = evaluation_metrics(self.bucket, prefix)

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
            if self.read_manifest(prefix + MANIFEST_FILE, "manifest")[0].files != files:
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

    def _finetune_base(self, arn: str | None, manifest: Manifest) -> Package:
        """The approved base package a job trained on: the one its manifest names (the workflow passes the package
        it resolved), which must be of the manifest's base model and have its weights; else (a manifest without an
        ARN) the one approved base version with those weights. Two versions may share weights and differ in other
        files (config, tokenizer): then only the ARN can tell them apart."""
        group, weights = base_group_name(manifest.base_model_id), manifest.base_weights_digest
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
                f"base weights {weights} of {manifest.base_model_id} match no approved base package; register "
                "and approve the base first"
            )
        if len({p.metadata.get(Metadata.CONTENT_DIGEST) for p in candidates}) > 1:
            raise RegistryError(
                f"{len(candidates)} approved versions of {group} share weights {weights} "
                f"({', '.join(p.arn for p in candidates)}) and the manifest names no base_model_package_arn"
            )
        return candidates[0]


def _relative(name: str) -> bool:
    """A manifest's file name is a plain relative path (no ``..``, no leading ``/``)."""
    return bool(name) and not name.startswith("/") and ".." not in name.split("/")


def _sha256(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"
