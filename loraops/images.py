"""AWS Deep Learning Container image URIs per region, from ``dlc_images.json`` (standard library only).

The table is written by ``python -m infra.images`` from the SageMaker Python SDK's bundled image configuration,
and a test proves it equal to what the SDK resolves. Families: ``training`` (the trainer's base) and ``serving``
(DJL Serving with LMI).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("dlc_images.json")


class ImageError(ValueError):
    """No image of the family is published in the region."""


@cache
def _table() -> dict:
    return json.loads(TABLE.read_text())


def image_uri(family: str, region: str) -> str:
    """The URI of ``family`` (``training`` or ``serving``) in ``region``."""
    entry = _table()[family]
    if region not in entry["regions"]:
        raise ImageError(
            f"no {family} image ({entry['family']}) is published in {region}; regions: "
            f"{', '.join(sorted(entry['regions']))}"
        )
    return entry["regions"][region]


def registry_of(uri: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com`` of an image URI (what `docker login` needs)."""
    return uri.split("/", 1)[0]
