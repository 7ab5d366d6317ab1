"""A local AWS emulator (moto's server, on 127.0.0.1 and a free port) and an environment's registry in it, built
from the same naming and collection code the stacks use."""

from __future__ import annotations

import socket
import urllib.request

import boto3
import pytest
from botocore.config import Config

from loraops.collections import Hierarchy
from loraops.naming import (
    TAG_APPROVAL_POLICY,
    OutputMode,
    adapter_group_name,
    base_group_name,
    base_group_tags,
    finetuned_group_tags,
    merged_group_name,
)
from loraops.registry import Registry

MODEL_ID = "meta-llama/Llama-2-7b-hf"
BUCKET = "loraops-test-artifacts"
REGION = "us-east-1"
ADAPTER_GROUP = adapter_group_name(MODEL_ID, "instruction-following")
MERGED_GROUP = merged_group_name(MODEL_ID, "databricks-dolly-15k")


@pytest.fixture(scope="session")
def emulator():
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(emulator, monkeypatch):
    """Clean emulator state and credentials that reach nothing but it."""
    urllib.request.urlopen(urllib.request.Request(f"{emulator}/moto-api/reset", method="POST")).read()
    for key, value in dict(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION
    ).items():
        monkeypatch.setenv(key, value)
    config = Config(retries={"max_attempts": 1})
    return {
        name: boto3.client(name, endpoint_url=emulator, region_name=REGION, config=config)
        for name in ("sagemaker", "s3")
    }


def create_environment(aws, approval: str) -> None:
    """The bucket and the package groups with the tags the registry stack gives them."""
    aws["s3"].create_bucket(Bucket=BUCKET)
    hierarchy = Hierarchy.for_base(base_group_name(MODEL_ID))
    groups = {
        base_group_name(MODEL_ID): {**base_group_tags(MODEL_ID), **hierarchy.root.member_tag()},
        ADAPTER_GROUP: {
            **finetuned_group_tags(MODEL_ID, OutputMode.ADAPTER, "databricks-dolly-15k"),
            **hierarchy.collection_for(OutputMode.ADAPTER).member_tag(),
        },
        MERGED_GROUP: {
            **finetuned_group_tags(MODEL_ID, OutputMode.MERGED, "databricks-dolly-15k"),
            **hierarchy.collection_for(OutputMode.MERGED).member_tag(),
        },
    }
    for name, tags in groups.items():
        tags = {**tags, TAG_APPROVAL_POLICY: approval}
        aws["sagemaker"].create_model_package_group(
            ModelPackageGroupName=name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
        )


@pytest.fixture
def registry(aws) -> Registry:
    create_environment(aws, "manual")
    return Registry(aws["sagemaker"], aws["s3"], BUCKET, REGION, approval="manual")
