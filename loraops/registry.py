"""SageMaker Model Registry operations (boto3): register base models (put under ``base/`` by
:mod:`loraops.base_import`), register fine-tunes with their lineage, approve or reject, read the base -> collection
-> group -> version tree, and what the storage costs.

Every registration checks before it writes: a bad input raises :class:`RegistryError` and registers nothing.
Registrations are idempotent: the same base bytes (weights digest) or the same training job give back the package
already registered. (Concurrent deliveries of one event are serialised by the registration function's idempotency
table, not here.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loraops import s3_layout
from loraops.collections import PATH_TAG_PREFIX
from loraops.manifest import MANIFEST_FILE, WEIGHT_SUFFIXES
from loraops.naming import (
    TAG_APPROVAL_POLICY,
    TAG_BASE_GROUP,
    TAG_MODEL_TYPE,
    TAG_OUTPUT_MODE,
    ModelType,
    OutputMode,
    base_group_name,
)

#: Written next to an imported base model's files: their digests and the combined weights digest.
BASE_MANIFEST = "loraops-base.json"
EVALUATION_FILE = "evaluation.json"
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


class RegistryError(ValueError):
    """The registration or approval cannot proceed; nothing was written."""


@dataclass(frozen=True)
class Package:
    arn: str
    group: str
    version: int
    status: str
    metadata: dict[str, str] = field(default_factory=dict)
    model_data_prefix: str = ""
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
            deleting=description.get("ModelPackageStatus") == "Deleting",
        )


@dataclass
class Registry:
    """The registry of one environment: its SageMaker and S3 clients, artifact bucket and approval policy."""

    sagemaker: Any
    s3: Any
    bucket: str
    region: str
    approval: str = "manual"
    image: str = ""  # the serving image packages name; from loraops.images when empty

    def __post_init__(self) -> None:
        if self.approval not in ("auto", "manual"):
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
            os.environ.get("APPROVAL", "manual"),
        )

    # ----------------------------------------------------------------------------------------------- base
    def register_base(self, model_id: str, weights_digest: str) -> Package:
        """Register the base model that lies under ``base/<group>/<weights hex>/`` with its digests (put there by
        :mod:`loraops.base_import`); the same digest again gives the package already registered."""
        group = base_group_name(model_id)
        prefix = s3_layout.base_model_prefix(group, weights_digest)
        manifest = self._json(prefix + BASE_MANIFEST, "base manifest")
        if manifest.get("weights_digest") != weights_digest or manifest.get("model_id") != model_id:
            raise RegistryError(
                f"s3://{self.bucket}/{prefix}{BASE_MANIFEST} describes {manifest.get('model_id')} "
                f"{manifest.get('weights_digest')}, not {model_id} {weights_digest}"
            )
        sizes = {o["Key"][len(prefix) :]: o["Size"] for o in self.objects(prefix)}
        wrong = sorted(n for n, size in manifest["sizes"].items() if sizes.get(n) != size)
        if wrong or not any(n.endswith(WEIGHT_SUFFIXES) for n in manifest["files"]):
            raise RegistryError(f"s3://{self.bucket}/{prefix}: files missing or of another size: {wrong}")
        if found := self._find(group, "weightsDigest", weights_digest):
            return found
        metadata = {"modelId": model_id, "weightsDigest": weights_digest, "licence": manifest.get("licence", "")}
        return self._create(group, prefix, metadata, f"{model_id} ({weights_digest[:19]})")

    # ------------------------------------------------------------------------------------------ fine-tune
    def register_finetune(self, group: str, model_prefix: str, training_job: str) -> Package:
        """Register a training job's uncompressed output (``model_prefix``, a key under the bucket) in ``group``,
        with its lineage; refused unless its base digest is an approved base package."""
        if not model_prefix.endswith("/"):
            raise RegistryError(f"model prefix {model_prefix!r} must end with '/' (an S3Prefix model data source)")
        manifest = self._json(model_prefix + MANIFEST_FILE, "training manifest")
        evaluation = self._json(model_prefix + EVALUATION_FILE, "evaluation report")
        for key in ("output_mode", "base_model_id", "base_weights_digest", "dataset_digest", "files"):
            if key not in manifest:
                raise RegistryError(f"{model_prefix}{MANIFEST_FILE}: no '{key}'")
        if "language_modeling_metrics" not in evaluation:
            raise RegistryError(f"{model_prefix}{EVALUATION_FILE}: not a ModelMetrics statistics report")
        listed = {o["Key"][len(model_prefix) :] for o in self.objects(model_prefix)}
        if missing := sorted(set(manifest["files"]) - listed):
            raise RegistryError(f"{model_prefix}: files the manifest lists are missing: {missing}")
        tags = self._group_tags(group)
        mode = OutputMode(manifest["output_mode"])
        if tags.get(TAG_OUTPUT_MODE) != mode.value:
            raise RegistryError(f"group {group} holds {tags.get(TAG_OUTPUT_MODE)} models, the job wrote {mode.value}")
        base = self._find(
            base_group_name(manifest["base_model_id"]),
            "weightsDigest",
            manifest["base_weights_digest"],
            status=APPROVED,
        )
        if base is None:
            raise RegistryError(
                f"base weights {manifest['base_weights_digest']} of {manifest['base_model_id']} match "
                "no approved base package; register and approve the base first"
            )
        if found := self._find(group, "trainingJob", training_job):
            return found
        hyperparameters = manifest.get("hyperparameters", {})
        metadata = {
            "baseModelPackageArn": base.arn,
            "baseWeightsDigest": manifest["base_weights_digest"],
            "datasetName": manifest.get("dataset_name", ""),
            "datasetDigest": manifest["dataset_digest"],
            "trainingJob": training_job,
            "outputMode": mode.value,
            "codeVersion": manifest.get("code_version", ""),
            "image": self.image,
            "manifest": s3_layout.s3_uri(self.bucket, model_prefix + MANIFEST_FILE),
            "evalLoss": str(manifest.get("metrics", {}).get("validation_loss", "")),
            **{f"hp.{k}": str(hyperparameters[k]) for k in KEY_HYPERPARAMETERS if k in hyperparameters},
        }
        metrics = {
            "ModelQuality": {
                "Statistics": {
                    "ContentType": "application/json",
                    "S3Uri": s3_layout.s3_uri(self.bucket, model_prefix + EVALUATION_FILE),
                }
            }
        }
        return self._create(group, model_prefix, metadata, f"{training_job}: {mode.value}", metrics)

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
        try:
            return self._package(self.sagemaker.describe_model_package(ModelPackageName=package_arn))
        except self.sagemaker.exceptions.ClientError as error:
            raise RegistryError(f"model package {package_arn}: {error}") from None

    # ----------------------------------------------------------------------------------------- decisions
    def decide(self, package_arn: str, approve: bool, reason: str = "") -> Package:
        """Approve or reject one package version (in manual environments only the approver role may)."""
        status = APPROVED if approve else REJECTED
        current = self.describe(package_arn)
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
                groups[group["ModelPackageGroupName"]] = self._group_tags(group["ModelPackageGroupName"])
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
            variants = {
                mode: [v for g in base["groups"][1:] if g["mode"] == mode for v in g["versions"]]
                for mode in (OutputMode.ADAPTER.value, OutputMode.MERGED.value)
            }
            adapters = sum(v["bytes"] for v in variants["adapter"])
            merged = sum(v["bytes"] for v in variants["merged"])
            report.append(
                {
                    "base": base["base"],
                    "base_bytes": base_bytes,
                    "adapter_variants": len(variants["adapter"]),
                    "adapter_bytes": adapters,
                    "merged_variants": len(variants["merged"]),
                    "merged_bytes": merged,
                    # had every adapter been kept merged, each would repeat the base
                    "adapters_if_merged_bytes": len(variants["adapter"]) * base_bytes + adapters,
                    "saved_by_separate_adapters_bytes": len(variants["adapter"]) * base_bytes,
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
                    "dataset": package.metadata.get("datasetName", ""),
                    "eval_loss": package.metadata.get("evalLoss", ""),
                    "training_job": package.metadata.get("trainingJob", ""),
                    "bytes": sum(o["Size"] for o in self.objects(package.model_data_prefix)),
                }
            )
        return {
            "group": name,
            "type": tags.get(TAG_MODEL_TYPE, ""),
            "mode": tags.get(TAG_OUTPUT_MODE, ""),
            "approval_policy": tags.get(TAG_APPROVAL_POLICY, ""),
            "versions": versions,
        }

    def _create(
        self, group: str, prefix: str, metadata: dict[str, str], description: str, metrics: dict | None = None
    ) -> Package:
        request: dict[str, Any] = {
            "ModelPackageGroupName": group,
            "ModelPackageDescription": description[:1024],
            "InferenceSpecification": {
                "Containers": [
                    {
                        "Image": self.image,
                        "ModelDataSource": {
                            "S3DataSource": {
                                "S3Uri": s3_layout.s3_uri(self.bucket, prefix),
                                "S3DataType": "S3Prefix",
                                "CompressionType": "None",
                            }
                        },
                    }
                ],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
            "ModelApprovalStatus": APPROVED if self.approval == "auto" else PENDING,
            "CustomerMetadataProperties": {k: v[:1024] for k, v in metadata.items() if v},  # no empty values
        }
        if metrics:
            request["ModelMetrics"] = metrics
        arn = self.sagemaker.create_model_package(**request)["ModelPackageArn"]
        return self._package(self.sagemaker.describe_model_package(ModelPackageName=arn))

    def _find(self, group: str, key: str, value: str, status: str | None = None) -> Package | None:
        for summary in self._summaries(group):
            if status and summary.get("ModelApprovalStatus") != status:
                continue
            package = self._package(self.sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"]))
            if package.metadata.get(key) == value:
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

    def _json(self, key: str, what: str) -> dict[str, Any]:
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
        return data

    @staticmethod
    def _package(description: dict[str, Any]) -> Package:
        return Package.from_description(description)


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
