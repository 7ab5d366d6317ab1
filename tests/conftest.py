"""Shared test settings and fixtures: a tiny base model and tokenizer built by the tests themselves (no
downloads)."""

import os
from pathlib import Path

import pytest

from tests.helpers import DOLLY

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from loraops_trainer.synthetic_base import TINY, build_base_model, dolly_texts

    return build_base_model(tmp_path_factory.mktemp("tiny-base"), dolly_texts(DOLLY), TINY)


@pytest.fixture(scope="session")
def tokenizer(tiny_base):
    from loraops_trainer.inputs import load_tokenizer

    return load_tokenizer(str(tiny_base))
