"""The image families loraops uses, resolved by the SageMaker Python SDK's bundled image configuration.

``cdk synth`` must stay light (no SageMaker SDK, ~450 MB) and offline, so the URIs live in a checked-in table,
``loraops/dlc_images.json`` (every region the SDK serves each family in), read by :mod:`loraops.images`.
``python -m infra.images`` (with ``sagemaker-core`` installed, as in the test environment) writes it; a test proves
it equals what the SDK resolves, so the table can never drift from the SDK silently.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from loraops.images import TABLE


@dataclass(frozen=True)
class ImageFamily:
    """Arguments of ``sagemaker.core.image_uris.retrieve`` for one image family."""

    framework: str
    version: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def arguments(self) -> dict[str, str]:
        return {"version": self.version, **dict(self.options)}


#: The trainer's base: the AWS Hugging Face PyTorch training image (transformers 5.3, PyTorch 2.9, CUDA 13).
TRAINING_IMAGE = ImageFamily(
    framework="huggingface",
    version="5.3.0",
    options=(
        ("base_framework_version", "pytorch2.9.0"),
        ("py_version", "py312"),
        ("image_scope", "training"),
        ("instance_type", "ml.g5.2xlarge"),
    ),
)
#: The serving image: DJL Serving with LMI (vLLM), pinned (the SDK's "latest" moves).
SERVING_IMAGE = ImageFamily(framework="djl-lmi", version="0.38.0")
FAMILIES = {"training": TRAINING_IMAGE, "serving": SERVING_IMAGE}


def resolve_with_sdk(family: ImageFamily) -> dict[str, str]:
    """Every region's URI, from the SageMaker SDK's bundled configuration (needs ``sagemaker-core``)."""
    from sagemaker.core import image_uris

    config = image_uris.config_for_framework(family.framework)
    options = dict(family.options)
    scope = config[options["image_scope"]] if "image_scope" in options and "versions" not in config else config
    entry = scope["versions"][family.version]
    registries = (
        entry["registries"] if "registries" in entry else entry[options["base_framework_version"]]["registries"]
    )
    return {
        region: image_uris.retrieve(family.framework, region=region, **family.arguments)
        for region in sorted(registries)
    }


def build_table() -> dict:
    return {
        name: {"family": {"framework": family.framework, **family.arguments}, "regions": resolve_with_sdk(family)}
        for name, family in FAMILIES.items()
    }


def main() -> int:
    TABLE.write_text(json.dumps(build_table(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
