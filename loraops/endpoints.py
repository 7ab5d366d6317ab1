"""What the serving stack and the deploy-on-approval function agree on: names, the served-model parameter, the
blue/green rollout and the container environment of each serving engine.

Requests are written in the SageMaker API's shape; CloudFormation's ``AWS::SageMaker::*`` properties use the same
names, so the stack and the function build from one definition.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Serving engines: ``vllm`` (LMI's vLLM backend with LoRA; adapter inference components) or ``loraops``
#: (``loraops_serving`` in DJL's Python engine; adapters mounted beside the model).
VLLM, LORAOPS = "vllm", "loraops"
ENGINES = (VLLM, LORAOPS)
#: Serving modes: one model behind the endpoint, or a base inference component with adapter components.
ENDPOINT, INFERENCE_COMPONENTS = "endpoint", "inference-components"
MODES = (ENDPOINT, INFERENCE_COMPONENTS)
VARIANT = "main"
_PROPERTIES = {VLLM: "vllm.properties", LORAOPS: "serving.properties"}
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def resource_name(*parts: str) -> str:
    """A SageMaker resource name (63 characters at most) from ``parts``; long ones keep their start and end a
    hash of the whole, so distinct inputs stay distinct."""
    name = re.sub(r"-{2,}", "-", "-".join(parts).replace("_", "-").replace(".", "-")).strip("-")
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid SageMaker resource name")
    return name


def endpoint_name(prefix: str) -> str:
    return resource_name(prefix, "llm")


def base_component_name(prefix: str) -> str:
    return resource_name(prefix, "base")


def component_name(prefix: str, package_group: str) -> str:
    """The inference component that serves the newest approved version of ``package_group``."""
    return resource_name(prefix, package_group)


def served_model_parameter(prefix: str) -> str:
    """SSM parameter with the S3 key prefix the endpoint's model serves (``base/...`` or ``merged/...``): set once
    by ``loraops serve pin``, moved by the deploy function after a merged roll; the serving stack reads it."""
    return f"/{prefix}/serving/model-prefix"


def rollback_alarm_names(prefix: str) -> list[str]:
    """The CloudWatch alarms (serving stack) that roll a blue/green endpoint update back."""
    return [f"{prefix}-serving-p90-latency", f"{prefix}-serving-5xx"]


def blue_green(alarms: list[str], wait_s: int = 300) -> dict:
    """``DeploymentConfig`` of an endpoint update: all traffic to the new fleet at once after ``wait_s`` baking,
    rolled back when any of ``alarms`` fires."""
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": wait_s},
            "TerminationWaitInSeconds": 600,
            "MaximumExecutionTimeoutInSeconds": 3600,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarms]},
    }


def properties_environment(text: str) -> dict[str, str]:
    """A DJL ``serving.properties`` text as container environment variables, the form DJL Serving also reads:
    ``option.entryPoint=m`` -> ``OPTION_ENTRYPOINT=m``, ``batch_size=16`` -> ``SERVING_BATCH_SIZE=16``. ``engine`` is
    left out: the LMI image runs the Python engine by default."""
    environment = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator:
            raise ValueError(f"not a property line: {line!r}")
        key = key.strip()
        if key == "engine":
            continue
        name = f"OPTION_{key.removeprefix('option.')}" if key.startswith("option.") else f"SERVING_{key}"
        environment[name.upper()] = value.strip()
    return environment


def engine_environment(engine: str, serving_container: Path) -> dict[str, str]:
    """The container environment of ``engine``, from its properties file in ``serving_container/``."""
    if engine not in ENGINES:
        raise ValueError(f"unknown serving engine {engine!r}; engines: {', '.join(ENGINES)}")
    return properties_environment((serving_container / _PROPERTIES[engine]).read_text())


@dataclass(frozen=True)
class ServingTarget:
    """The environment's endpoint, as the serving stack made it."""

    prefix: str  # loraops-<env>: names of what the function creates
    mode: str  # endpoint | inference-components
    endpoint: str
    rollback_alarms: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> ServingTarget:
        """``NAME_PREFIX``, ``SERVING_MODE``, ``ENDPOINT_NAME``, ``ROLLBACK_ALARMS`` (comma-separated)."""
        environ = os.environ if environ is None else environ
        mode = environ["SERVING_MODE"]
        if mode not in MODES:
            raise ValueError(f"SERVING_MODE={mode!r}; modes: {', '.join(MODES)}")
        alarms = tuple(a for a in environ.get("ROLLBACK_ALARMS", "").split(",") if a)
        return cls(environ["NAME_PREFIX"], mode, environ["ENDPOINT_NAME"], alarms)

    @property
    def base_component(self) -> str:
        return base_component_name(self.prefix)
