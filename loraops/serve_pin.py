"""``loraops serve pin``: record an approved base or merged package as the model the serving stack deploys."""

from __future__ import annotations

from typing import Any

from loraops import endpoints
from loraops.deployment import DeploymentError
from loraops.naming import Metadata, OutputMode
from loraops.packages import APPROVED, Package
from loraops.registry import Registry


def pin_served_model(registry: Registry, ssm: Any, prefix: str, package_arn: str) -> Package:
    """Record an approved base or merged package as the model the serving stack deploys (its SSM parameter)."""
    package = registry.describe(package_arn)
    if package.status != APPROVED:
        raise DeploymentError(f"{package_arn} is {package.status or 'not approved'}; only approved packages are served")
    if package.metadata.get(Metadata.OUTPUT_MODE) == OutputMode.ADAPTER:
        raise DeploymentError(
            f"{package_arn} is an adapter: pin its base, and approving the adapter adds its inference component"
        )
    registry.check_in_environment(package)
    registry.verify_content(package)
    ssm.put_parameter(
        Name=endpoints.served_model_parameter(prefix), Value=package.model_data_prefix, Type="String", Overwrite=True
    )
    return package
