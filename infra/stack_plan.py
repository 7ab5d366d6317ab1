"""What ``make deploy`` deploys and in which order: the environment's stacks by dependency, the serving stack left out
until ``loraops serve pin`` has named its model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infra.environment_config import EnvironmentConfig
from loraops import endpoints

#: The concerns of an environment in deployment order: each after every stack it depends on (the explicit
#: dependencies of :class:`infra.environment.EnvironmentStacks`; a test checks this order against them).
DEPLOY_ORDER = ("network", "storage", "studio", "registry", "registration", "training", "workflow", "serving")


@dataclass(frozen=True)
class StackPlan:
    """What ``make deploy`` deploys: stack names in dependency order, and the stacks left out with their reason."""

    deploy: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def parameter_exists(ssm: Any, name: str) -> bool:
    try:
        ssm.get_parameter(Name=name)
    except ssm.exceptions.ParameterNotFound:
        return False
    return True


def stack_plan(config: EnvironmentConfig, ssm: Any) -> StackPlan:
    """The environment's stacks in deployment order (``ssm``: an SSM client of the environment's account and
    region). The serving stack is left out while its model parameter (``loraops serve pin``) does not exist: its
    template reads that parameter, and CloudFormation fails a stack whose SSM parameter is missing."""
    names = [f"{config.prefix}-{concern}" for concern in DEPLOY_ORDER if concern != "serving" or config.serving]
    skipped = {}
    serving = f"{config.prefix}-serving"
    parameter = endpoints.served_model_parameter(config.prefix)
    if config.serving and not parameter_exists(ssm, parameter):
        names.remove(serving)
        skipped[serving] = (
            f"{serving} skipped: no served model yet (SSM {parameter}); import and approve a base, "
            f"`loraops serve pin` it, then run make deploy ENV={config.name} again"
        )
    return StackPlan(names, skipped)
