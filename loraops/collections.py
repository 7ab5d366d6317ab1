"""Model Registry collections, in the exact form the SageMaker Python SDK (``sagemaker/collection.py``) and Studio
read them.

A collection is an AWS Resource Groups group whose ``TAG_FILTERS_1_0`` query selects model package groups and
groups carrying one tag, ``sagemaker:collection-path:<id>`` = ``<path>``. A root collection is tagged
``sagemaker:collection=true`` and ``sagemaker:collection-path:root=true``; a child carries its parent's path tag
(that is what puts it inside the parent) and ``sagemaker:collection=true``, and its own path is
``<parent path>/<name>``. Adding a model package group to a collection is tagging the group with the
collection's path tag.

The SDK takes ``<id>`` from the clock at creation (milliseconds); CloudFormation needs the same id on every synth,
so loraops derives it from the path: a 13-digit number, like the SDK's, that never changes for a path.

loraops' hierarchy, per base model::

    <base-group>                       root: the base model's package group
    ├── <base-group>-adapters          child (path <base-group>/<base-group>-adapters): the adapter lines
    └── <base-group>-merged            child (path <base-group>/<base-group>-merged): the merged lines

Earlier loraops versions gave the children the paths ``<base-group>/adapters`` and ``<base-group>/merged`` (not
the SDK's form): :func:`migrate_member_tags` moves model package groups tagged that way into the SDK-form
collections (the registry stack's own groups and collections are updated by the next ``cdk deploy``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from loraops.naming import OutputMode

COLLECTION_TAG = "sagemaker:collection"
ROOT_TAG = "sagemaker:collection-path:root"
PATH_TAG_PREFIX = "sagemaker:collection-path:"
QUERY_TYPE = "TAG_FILTERS_1_0"
MEMBER_TYPES = ("AWS::SageMaker::ModelPackageGroup", "AWS::ResourceGroups::Group")


def path_id(path: str) -> str:
    """A stable 13-digit id for ``path`` (the SDK uses the creation time in milliseconds, also 13 digits)."""
    return str(1_600_000_000_000 + int(hashlib.sha256(path.encode()).hexdigest()[:12], 16) % 100_000_000_000)


@dataclass(frozen=True)
class Collection:
    name: str
    path: str
    parent: Collection | None = None

    @property
    def path_tag_key(self) -> str:
        return f"{PATH_TAG_PREFIX}{path_id(self.path)}"

    def group_tags(self) -> dict[str, str]:
        """Tags of the collection's own resource group."""
        if self.parent is None:
            return {COLLECTION_TAG: "true", ROOT_TAG: "true"}
        return {self.parent.path_tag_key: self.parent.path, COLLECTION_TAG: "true"}

    def member_tag(self) -> dict[str, str]:
        """The tag that puts a model package group into this collection."""
        return {self.path_tag_key: self.path}

    def query(self) -> dict[str, object]:
        """``ResourceTypeFilters`` and ``TagFilters`` of the group's ``TAG_FILTERS_1_0`` query."""
        return {
            "ResourceTypeFilters": list(MEMBER_TYPES),
            "TagFilters": [{"Key": self.path_tag_key, "Values": [self.path]}],
        }

    def resource_query(self) -> dict[str, str]:
        """The query as the Resource Groups API takes it (``CreateGroup``'s ``ResourceQuery``)."""
        return {"Type": QUERY_TYPE, "Query": json.dumps(self.query())}


@dataclass(frozen=True)
class Hierarchy:
    """The collections of one base model."""

    root: Collection
    children: dict[OutputMode, Collection]

    @classmethod
    def for_base(cls, base_group: str) -> Hierarchy:
        root = Collection(name=base_group, path=base_group)
        children = {
            mode: Collection(name=f"{base_group}-{label}", path=f"{base_group}/{base_group}-{label}", parent=root)
            for mode, label in ((OutputMode.ADAPTER, "adapters"), (OutputMode.MERGED, "merged"))
        }
        return cls(root=root, children=children)

    def collection_for(self, mode: OutputMode | None) -> Collection:
        """Where a package group belongs: the root for the base model, the mode's child for a fine-tuned line."""
        return self.root if mode is None else self.children[mode]

    @property
    def all(self) -> list[Collection]:
        return [self.root, *self.children.values()]


def legacy_paths(base_group: str) -> dict[str, Collection]:
    """The child paths earlier loraops versions wrote (``<base>/adapters``, ``<base>/merged``) -> the collection
    that replaces each."""
    hierarchy = Hierarchy.for_base(base_group)
    return {f"{base_group}/{label}": hierarchy.children[mode] for mode, label in LEGACY_LABELS}


LEGACY_LABELS = ((OutputMode.ADAPTER, "adapters"), (OutputMode.MERGED, "merged"))


def migrate_member_tags(sagemaker, base_group: str) -> list[str]:
    """Re-tag the model package groups that carry an earlier version's child path tag with the SDK-form path tag
    of the same collection (and remove the old tag). Returns the groups moved; running it again moves none."""
    moved = []
    legacy = {f"{PATH_TAG_PREFIX}{path_id(path)}": (path, new) for path, new in legacy_paths(base_group).items()}
    for page in sagemaker.get_paginator("list_model_package_groups").paginate():
        for summary in page["ModelPackageGroupSummaryList"]:
            arn = summary["ModelPackageGroupArn"]
            tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=arn).get("Tags", [])}
            for key, (path, collection) in legacy.items():
                if tags.get(key) == path:
                    ((new_key, new_value),) = collection.member_tag().items()
                    sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": new_key, "Value": new_value}])
                    sagemaker.delete_tags(ResourceArn=arn, TagKeys=[key])
                    moved.append(summary["ModelPackageGroupName"])
    return moved
