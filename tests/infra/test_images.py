"""The checked-in image table equals what the SageMaker SDK's bundled configuration resolves."""

from __future__ import annotations

import json

import pytest

from infra import images
from infra.config import ConfigError, parse_environment
from loraops.images import image_uri, registry_of


def test_table_equals_the_sdks_resolution():
    """`python -m infra.images` wrote the table; the SDK (sagemaker-core, in requirements-dev) must agree."""
    assert json.loads(images.TABLE.read_text()) == json.loads(json.dumps(images.build_table(), sort_keys=True))


def test_regions_use_their_own_dlc_account():
    assert image_uri("training", "us-east-1").startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/")
    assert image_uri("training", "af-south-1").startswith("626614931356.dkr.ecr.af-south-1.amazonaws.com/")
    assert registry_of(image_uri("training", "af-south-1")) == "626614931356.dkr.ecr.af-south-1.amazonaws.com"


def test_a_region_without_the_image_is_refused_at_synth(cdk_context):
    raw = dict(
        cdk_context["loraops:environments"]["dev"],
        region="xx-nowhere-1",
        availability_zones=["xx-nowhere-1a", "xx-nowhere-1b"],
    )
    with pytest.raises(
        ConfigError,
        match=r"loraops:environments.dev.region: no training image .* is published in "
        r"xx-nowhere-1",
    ):
        parse_environment("dev", raw)
