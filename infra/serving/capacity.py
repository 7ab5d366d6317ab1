"""How many base-component copies the endpoint can hold: accelerators per instance type, and what the merged lines
take (inference-components mode)."""

from __future__ import annotations

from infra.config import ConfigError
from infra.serving.props import ServingProps
from loraops.naming import OutputMode

_G_SIZES = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4}
#: Accelerators (GPUs) per instance, by family and size, for the families serving may use.
_ACCELERATORS_BY_SIZE = {
    ("g4dn", "g5", "g6", "g6e"): _G_SIZES | {"48xlarge": 8},
    ("p4d", "p4de", "p5", "p5e"): {"24xlarge": 8, "48xlarge": 8},
}


def accelerators(instance_type: str) -> int:
    """Accelerators of one ``ml.<family>.<size>`` instance."""
    _, family, size = instance_type.split(".")
    for families, sizes in _ACCELERATORS_BY_SIZE.items():
        if family in families and size in sizes:
            return sizes[size]
    raise ConfigError(
        f"serving_instance_type {instance_type}: its accelerator count is unknown to infra/serving/capacity.py"
    )


def component_capacity(props: ServingProps) -> int:
    """The most base-component copies the endpoint can hold next to one copy per merged line (each with the base's
    compute, deploy-on-approval's merged component); :class:`ConfigError` when not even ``min_instances`` fit."""
    serving = props.serving
    assert serving is not None
    per_instance = accelerators(props.serving_instance_type) // serving.accelerators_per_copy
    merged = sum(1 for line in props.fine_tuned_lines if line.mode is OutputMode.MERGED)
    slots = per_instance * serving.max_instances
    if slots - merged < serving.min_instances:
        raise ConfigError(
            f"{props.name}.serving: {serving.min_instances} base cop{'y' if serving.min_instances == 1 else 'ies'} "
            f"and {merged} merged component(s) need {serving.min_instances + merged} copies of "
            f"{serving.accelerators_per_copy} accelerator(s), but max_instances {serving.max_instances} of "
            f"{props.serving_instance_type} hold {slots}: raise serving.max_instances in cdk.json"
        )
    return slots - merged
