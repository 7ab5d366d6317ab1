"""AWS Deep Learning Container images, as the SageMaker Python SDK's bundled image configuration resolves them.

``cdk synth`` must stay light (no SageMaker SDK, ~450 MB) and offline, so the URIs live in a checked-in table,
``infra/dlc_images.json`` (every region the SDK serves the image family in). ``python -m infra.images`` (with
``sagemaker-core`` installed, as in the test environment) writes it; a test proves it equals what the SDK
resolves, so the table can never drift from the SDK silently.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("dlc_images.json")


@dataclass(frozen=True)
class ImageFamily:
    """Arguments of ``sagemaker.core.image_uris.retrieve`` for one image family."""

    framework: str
    version: str
    base_framework_version: str
    py_version: str
    image_scope: str
    instance_type: str


#: The trainer's base: the AWS Hugging Face PyTorch training image (transformers 5.3, PyTorch 2.9, CUDA 13).
TRAINING_IMAGE = ImageFamily(
    framework="huggingface",
    version="5.3.0",
    base_framework_version="pytorch2.9.0",
    py_version="py312",
    image_scope="training",
    instance_type="ml.g5.2xlarge",
)
FAMILIES = {"training": TRAINING_IMAGE}


class ImageError(ValueError):
    """No image of the family is published in the region."""


def image_uri(family: str, region: str) -> str:
    """The URI of ``family`` in ``region`` from the checked-in table."""
    table = json.loads(TABLE.read_text())
    regions = table[family]["regions"]
    if region not in regions:
        raise ImageError(
            f"no {family} image ({FAMILIES[family]}) is published in {region}; regions: {', '.join(sorted(regions))}"
        )
    return regions[region]


def registry_of(uri: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com`` of an image URI (what `docker login` needs)."""
    return uri.split("/", 1)[0]


def resolve_with_sdk(family: ImageFamily) -> dict[str, str]:
    """Every region's URI, from the SageMaker SDK's bundled configuration (needs ``sagemaker-core``)."""
    from sagemaker.core import image_uris

    config = image_uris.config_for_framework(family.framework)
    scope = config[family.image_scope]
    version = scope["versions"][family.version][family.base_framework_version]
    arguments = {k: v for k, v in asdict(family).items() if k != "framework"}
    return {
        region: image_uris.retrieve(family.framework, region=region, **arguments)
        for region in sorted(version["registries"])
    }


def build_table() -> dict:
    return {name: {"family": asdict(family), "regions": resolve_with_sdk(family)} for name, family in FAMILIES.items()}


def main() -> int:
    TABLE.write_text(json.dumps(build_table(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
