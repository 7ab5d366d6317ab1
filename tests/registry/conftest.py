"""A local AWS emulator (moto's server, on 127.0.0.1 and a free port) and an environment's registry in it, built
from the same naming and collection code the stacks use."""

from __future__ import annotations

import importlib.util
import socket
import urllib.request
from types import ModuleType

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


IDEMPOTENCY_TABLE = "loraops-test-idempotency"


class LambdaContext:
    """The fields of Lambda's context object that Powertools reads."""

    function_name = "loraops-test-function"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:loraops-test-function"
    aws_request_id = "test-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


@pytest.fixture
def function_environment(aws, emulator, monkeypatch) -> None:
    """What the stacks give every registry function: bucket, approval, idempotency table; boto3 reaches the emulator."""
    for key, value in dict(
        AWS_ENDPOINT_URL=emulator,
        ARTIFACT_BUCKET=BUCKET,
        APPROVAL="manual",
        IDEMPOTENCY_TABLE=IDEMPOTENCY_TABLE,
        POWERTOOLS_IDEMPOTENCY_DISABLED="false",
    ).items():
        monkeypatch.setenv(key, value)
    boto3.client("dynamodb", endpoint_url=emulator, region_name=REGION).create_table(
        TableName=IDEMPOTENCY_TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def load_handler(name: str) -> ModuleType:
    """``lambda/<name>/handler.py``, loaded the way Lambda loads it (a fresh module each time)."""
    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location(f"{name}_handler", ROOT / "lambda" / name / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke_concurrently(function: ModuleType, make_event, times: int = 4) -> list[dict]:
    """``times`` invocations of ``function.handler`` released at once; the results of those that ran (a delivery
    refused while another holds the idempotency record is retried by Lambda and gets the stored result)."""
    import threading

    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

    barrier, results = threading.Barrier(times), []

    def invoke():
        barrier.wait()
        try:
            results.append(function.handler(make_event(), LambdaContext()))
        except IdempotencyAlreadyInProgressError:
            pass

    threads = [threading.Thread(target=invoke) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results and all(r == results[0] for r in results), results
    return results
