"""A Model Registry package version as loraops reads it, its approval statuses, and the error every registry
operation raises when it cannot proceed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"


class RegistryError(ValueError):
    """The registration or approval cannot proceed; nothing was written."""


@dataclass(frozen=True)
class Package:
    """One package version: its group, version, approval status, lineage metadata and the S3 prefix it serves."""

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
