"""The registry of one environment, as every caller opens it: SageMaker Model Registry operations (boto3) on its
package groups and its artifact bucket, and the approval decisions.

It joins the registry's jobs, each in its own module: registering base models (:mod:`loraops.base_registration`)
and fine-tunes with their lineage (:mod:`loraops.finetune_registration`), one version per content
(:mod:`loraops.registration`), lookups (:mod:`loraops.registry_lookup`), the tree and storage report
(:mod:`loraops.registry_tree`), content verification and migration (:mod:`loraops.package_integrity`), over the
clients and bucket of :mod:`loraops.registry_store`.
"""

from __future__ import annotations

from loraops.base_registration import BaseRegistration
from loraops.package_integrity import PackageIntegrity
from loraops.packages import APPROVED, REJECTED, Package


class Registry(BaseRegistration, PackageIntegrity):
    """The registry of one environment: its SageMaker and S3 clients, artifact bucket and approval policy
    (:class:`loraops.registry_store.RegistryStore`), and every operation on it."""

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
