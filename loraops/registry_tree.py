"""The registry as a tree (base models -> collections -> groups -> versions) and the storage its versions hold."""

from __future__ import annotations

from typing import Any

from loraops.collections import PATH_TAG_PREFIX
from loraops.naming import (
    TAG_APPROVAL_POLICY,
    TAG_BASE_GROUP,
    TAG_ENVIRONMENT,
    TAG_MODEL_TYPE,
    TAG_OUTPUT_MODE,
    Metadata,
    ModelType,
    OutputMode,
)
from loraops.registry_lookup import RegistryLookup


class RegistryTree(RegistryLookup):
    """Reports over every group of this environment."""

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


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
