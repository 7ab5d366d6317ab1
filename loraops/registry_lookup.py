"""Queries of one environment's registry: a group's tags (and whether it is this environment's), its packages, the
package with a given metadata value, and one package described."""

from __future__ import annotations

from typing import Any

from loraops.naming import TAG_ENVIRONMENT
from loraops.packages import Package, RegistryError
from loraops.registry_store import RegistryStore


class RegistryLookup(RegistryStore):
    """Finding groups and packages, and checking that they are this environment's."""

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

    def check_in_environment(self, package: Package) -> None:
        """Raise unless ``package`` is this environment's: its group carries this environment's tag and its
        artifacts lie in this environment's bucket."""
        self._check_environment(package.group, self._group_tags(package.group))
        uri = package.model_data_uri
        if uri and not uri.startswith(f"s3://{self.bucket}/"):
            raise RegistryError(f"{package.arn} serves {uri}, outside this environment's bucket {self.bucket}")

    def _check_environment(self, group: str, tags: dict[str, str]) -> None:
        if self.environment is not None and tags.get(TAG_ENVIRONMENT) != self.environment:
            raise RegistryError(
                f"group {group} belongs to environment {tags.get(TAG_ENVIRONMENT) or '(none)'}, not to "
                f"{self.environment} (bucket {self.bucket})"
            )

    def group_tags(self, group: str) -> dict[str, str]:
        """``group``'s tags, once it is known to be this environment's (:class:`RegistryError` otherwise)."""
        tags = self._group_tags(group)
        self._check_environment(group, tags)
        return tags

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

    @staticmethod
    def _package(description: dict[str, Any]) -> Package:
        return Package.from_description(description)
