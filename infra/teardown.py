"""``make destroy``'s first step: what deploy-on-approval (and ``loraops serve pin``) made outside CloudFormation,
found by the names ``loraops.endpoints`` gives them and removed, never what a stack of the environment owns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from infra.environment_config import EnvironmentConfig
from infra.stack_plan import DEPLOY_ORDER
from loraops import endpoints


def _cloudformation_owned(cloudformation: Any, prefix: str) -> set[str]:
    """Names of every resource in the environment's CloudFormation stacks (a SageMaker resource's physical id is its
    ARN, ``arn:...:model/<name>``: the name is what follows the last slash)."""
    owned: set[str] = set()
    for concern in DEPLOY_ORDER:
        try:
            pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=f"{prefix}-{concern}")
            ids = [r.get("PhysicalResourceId", "") for page in pages for r in page["StackResourceSummaries"]]
            owned |= {i.rsplit("/", 1)[-1] if i.startswith("arn:") else i for i in ids}
        except cloudformation.exceptions.ClientError as error:
            if "does not exist" not in str(error):
                raise
    return owned


def _names(sagemaker: Any, operation: str, key: str, item: str, prefix: str, **kwargs: Any) -> list[str]:
    pages = sagemaker.get_paginator(operation).paginate(NameContains=prefix, **kwargs)
    return [entry[item] for page in pages for entry in page[key] if entry[item].startswith(f"{prefix}-")]


def remove_deployed(
    config: EnvironmentConfig,
    session: Any,
    sleep: Callable[[float], None] = time.sleep,
    wait_s: float = 1800,
    poll_s: float = 15,
) -> list[str]:
    """Delete what deploy-on-approval (and ``loraops serve pin``) made outside CloudFormation; returns what went.

    Found by the names :mod:`loraops.endpoints` gives them, and never one a stack of the environment owns:
    the inference components on the environment's endpoint other than the base component (waited for until gone:
    CloudFormation cannot delete the base component or the endpoint under them), the models and endpoint configs
    named ``loraops-<env>-...``, and, where the environment's data is destroyed with it (``removal_policy``
    ``destroy``), the versions in its package groups and the served-model parameter.
    """
    region = config.region
    sagemaker = session.client("sagemaker", region_name=region)
    owned = _cloudformation_owned(session.client("cloudformation", region_name=region), config.prefix)
    endpoint = endpoints.endpoint_name(config.prefix)
    removed = []
    components = [
        name
        for name in _names(
            sagemaker,
            "list_inference_components",
            "InferenceComponents",
            "InferenceComponentName",
            config.prefix,
            EndpointNameEquals=endpoint,
        )
        if name != endpoints.base_component_name(config.prefix) and name not in owned
    ]
    for name in components:
        sagemaker.delete_inference_component(InferenceComponentName=name)
        removed.append(f"inference component {name}")
    waited = 0.0
    while components:
        components = [name for name in components if _component_exists(sagemaker, name)]
        if components and waited >= wait_s:
            raise TimeoutError(f"inference components still deleting after {wait_s:.0f} s: {', '.join(components)}")
        if components:
            sleep(poll_s)
            waited += poll_s
    for name in _names(sagemaker, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", config.prefix):
        if name not in owned:
            sagemaker.delete_endpoint_config(EndpointConfigName=name)
            removed.append(f"endpoint config {name}")
    for name in _names(sagemaker, "list_models", "Models", "ModelName", config.prefix):
        if name not in owned:
            sagemaker.delete_model(ModelName=name)
            removed.append(f"model {name}")
    if config.removal_policy == "destroy":
        removed += _remove_packages(sagemaker, config.package_groups)
        ssm = session.client("ssm", region_name=region)
        parameter = endpoints.served_model_parameter(config.prefix)
        try:
            ssm.delete_parameter(Name=parameter)
            removed.append(f"SSM parameter {parameter}")
        except ssm.exceptions.ParameterNotFound:
            pass
    return removed


def _remove_packages(sagemaker: Any, groups: list[str]) -> list[str]:
    """Every version in ``groups`` (registered by the functions and the CLI, outside CloudFormation): a package group
    with versions in it cannot be deleted, so the registry stack's own delete would fail on them."""
    removed = []
    for group in groups:
        try:
            pages = sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group)
            arns = [p["ModelPackageArn"] for page in pages for p in page["ModelPackageSummaryList"]]
        except sagemaker.exceptions.ClientError as error:
            if error.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
                raise
            continue  # no such group (yet)
        for arn in arns:
            sagemaker.delete_model_package(ModelPackageName=arn)
            removed.append(f"model package {arn}")
    return removed


def _component_exists(sagemaker: Any, name: str) -> bool:
    try:
        sagemaker.describe_inference_component(InferenceComponentName=name)
    except sagemaker.exceptions.ClientError as error:
        if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return False
        raise
    return True
