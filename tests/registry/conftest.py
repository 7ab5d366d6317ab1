"""A local AWS emulator (moto's server, on 127.0.0.1 and a free port) and an environment's registry in it, built
from the same naming and collection code the stacks use."""

from __future__ import annotations

import json
import struct
import urllib.request
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from botocore.config import Config

from demo.functions import LambdaContext, load_handler  # noqa: F401 - shared with the demo
from loraops import s3_layout
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.collections import Hierarchy
from loraops.manifest import EVALUATION_FILE
from loraops.naming import (
    TAG_APPROVAL_POLICY,
    TAG_ENVIRONMENT,
    OutputMode,
    adapter_group_name,
    base_group_name,
    base_group_tags,
    finetuned_group_tags,
    merged_group_name,
)
from loraops.packages import Package
from loraops.promotion import SourceEnvironment
from loraops.registry import Registry
from tests.helpers import adapter_manifest
from tests.registry.stand_ins import SageMakerWithComponents

MODEL_ID = "meta-llama/Llama-2-7b-hf"
BUCKET = "loraops-test-artifacts"
REGION = "us-east-1"
ENVIRONMENT = "test"
ADAPTER_GROUP = adapter_group_name(MODEL_ID, "instruction-following")
MERGED_GROUP = merged_group_name(MODEL_ID, "databricks-dolly-15k")


@pytest.fixture(scope="session")
def emulator():
    from demo.local_aws import LocalAWS

    with LocalAWS() as aws:
        aws.configure({"stepfunctions": {"execute_state_machine": False}})  # tests that execute turn it on
        yield aws.url


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


def create_environment(aws, approval: str, environment: str = ENVIRONMENT, bucket: str = BUCKET) -> None:
    """The bucket and the package groups with the tags the stacks give them (the environment's on all)."""
    aws["s3"].create_bucket(Bucket=bucket)
    aws["s3"].put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": TAG_ENVIRONMENT, "Value": environment}]})
    hierarchy = Hierarchy.for_base(base_group_name(MODEL_ID))
    groups = {
        base_group_name(MODEL_ID): {**base_group_tags(), **hierarchy.root.member_tag()},
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
        tags = {**tags, TAG_APPROVAL_POLICY: approval, TAG_ENVIRONMENT: environment}
        aws["sagemaker"].create_model_package_group(
            ModelPackageGroupName=name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
        )


@pytest.fixture(scope="session")
def adapter_output(tiny_base, tmp_path_factory) -> Path:
    """A real trainer output (adapter) of the tiny base, made once: its manifest names that base's weights digest.
    Tests that change it work on a copy."""
    from loraops_trainer.cli import main
    from tests.helpers import fast_args

    out = tmp_path_factory.mktemp("job") / "model"
    assert main(fast_args(tiny_base, out, max_steps=2, sample_generations=0)) == 0
    return out


def upload_folder(aws, folder: Path, prefix: str, bucket: str = BUCKET) -> None:
    """Every file under ``folder`` to ``bucket`` under ``prefix``, as a job's output upload does."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            aws["s3"].upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())


@pytest.fixture
def registry(aws) -> Registry:
    create_environment(aws, "manual")
    return Registry(aws["sagemaker"], aws["s3"], BUCKET, REGION, approval="manual")


IDEMPOTENCY_TABLE = "loraops-test-idempotency"


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


# ------------------------------------ promotion: staging (us-east-1) and prod (us-west-2) in the emulator
STAGING = SourceEnvironment("staging", "123456789012", "us-east-1")  # moto's default account
PROD_REGION = "us-west-2"
STAGING_BUCKET, PROD_BUCKET = "loraops-staging-artifacts", "loraops-prod-artifacts"
BASE_GROUP = base_group_name(MODEL_ID)
PROMOTED_JOB = "loraops-dolly-adapter-3"


def _safetensors(path: Path, values: int, fill: float) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, 4 * values]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{values}f", *[fill] * values))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A base model folder and a training job's adapter output (manifest included) trained on it."""
    from loraops.manifest import folder_weights_digest

    base = tmp_path_factory.mktemp("base")
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    _safetensors(base / "model.safetensors", 64, 0.5)
    adapter = tmp_path_factory.mktemp("adapter")
    _safetensors(adapter / "adapter_model.safetensors", 16, 0.25)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (adapter / EVALUATION_FILE).write_text(json.dumps({"language_modeling_metrics": {"loss": {"value": 1.5}}}))
    adapter_manifest(
        folder_weights_digest(base), base_model_id=MODEL_ID, metrics={"validation_loss": 1.5}, training_job=PROMOTED_JOB
    ).write(adapter)
    return {"base": base, "adapter": adapter}


def _clients(emulator: str, region: str) -> dict:
    config = Config(retries={"max_attempts": 1})
    return {n: boto3.client(n, endpoint_url=emulator, region_name=region, config=config) for n in ("sagemaker", "s3")}


@pytest.fixture
def promotion_world(aws, emulator, folders):
    """Staging holds an approved base and an approved adapter of it; prod (manual approval) holds nothing yet."""
    staging = _clients(emulator, STAGING.region)
    prod = _clients(emulator, PROD_REGION)
    create_environment(staging, "manual", "staging", STAGING_BUCKET)
    create_environment({"s3": staging["s3"], "sagemaker": prod["sagemaker"]}, "manual", "prod", PROD_BUCKET)
    for bucket in (STAGING_BUCKET, PROD_BUCKET):  # the stacks' buckets are versioned
        staging["s3"].put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    source = Registry(staging["sagemaker"], staging["s3"], STAGING_BUCKET, STAGING.region, approval="manual")
    base = source.decide(import_base(source, LocalFolder(folders["base"]), MODEL_ID, licence="llama2").arn, True)
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, PROMOTED_JOB)
    for path in sorted(folders["adapter"].iterdir()):
        staging["s3"].upload_file(str(path), STAGING_BUCKET, prefix + path.name)
    adapter = source.decide(source.register_finetune(ADAPTER_GROUP, prefix, PROMOTED_JOB).arn, True)
    return {"staging": staging, "prod": prod, "base": base, "adapter": adapter, "emulator": emulator}


def _prod_objects(world) -> dict[str, bytes]:
    s3 = world["prod"]["s3"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=PROD_BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=PROD_BUCKET, Key=k)["Body"].read() for k in keys}


def _prod_packages(world) -> list[dict]:
    sagemaker = world["prod"]["sagemaker"]
    return [
        p
        for group in (BASE_GROUP, ADAPTER_GROUP)
        for p in sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    ]


PREFIX = "loraops-test"
ROLE = "arn:aws:iam::123456789012:role/loraops-test-sagemaker-execution"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"


def _train(tiny_base: Path, tmp_path_factory, mode: str) -> Path:
    from loraops_trainer.cli import main
    from tests.helpers import fast_args

    out = tmp_path_factory.mktemp(f"job-{mode}") / "model"
    assert main(fast_args(tiny_base, out, max_steps=2, sample_generations=0, output_mode=mode)) == 0
    return out


@pytest.fixture(scope="session")
def outputs(tiny_base, tmp_path_factory) -> dict[str, Path]:
    return {mode: _train(tiny_base, tmp_path_factory, mode) for mode in ("adapter", "merged")}


def _register(registry, aws, folder: Path, mode: OutputMode, group: str, job: str) -> Package:
    prefix = s3_layout.model_prefix(mode, group, job)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            aws["s3"].upload_file(str(path), BUCKET, prefix + str(path.relative_to(folder)))
    return registry.register_finetune(group, prefix, job)


def _model(sagemaker, name: str, prefix: str) -> None:
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": IMAGE,
            "Environment": {"OPTION_ENABLE_LORA": "true"},
            "ModelDataSource": {
                "S3DataSource": {
                    "S3Uri": f"s3://{BUCKET}/{prefix}",
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            },
        },
        VpcConfig={"SecurityGroupIds": ["sg-0123456789abcdef0"], "Subnets": ["subnet-0123456789abcdef0"]},
        EnableNetworkIsolation=True,
    )


@pytest.fixture
def deployment_world(registry, aws, emulator, tiny_base, outputs):
    """An approved base, an adapter and a merged fine-tune pending approval, the clients a deployment uses."""
    base = registry.decide(import_base(registry, LocalFolder(tiny_base), MODEL_ID).arn, approve=True)
    adapter = _register(registry, aws, outputs["adapter"], OutputMode.ADAPTER, ADAPTER_GROUP, "loraops-a-1")
    merged = _register(registry, aws, outputs["merged"], OutputMode.MERGED, MERGED_GROUP, "loraops-m-1")
    sagemaker = SageMakerWithComponents(registry.sagemaker)
    registry.sagemaker = sagemaker
    ssm = boto3.client("ssm", endpoint_url=emulator, region_name=REGION, config=Config(retries={"max_attempts": 1}))
    return {"base": base, "adapter": adapter, "merged": merged, "sagemaker": sagemaker, "ssm": ssm}
