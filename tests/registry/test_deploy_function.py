"""The deploy-on-approval function against the local AWS emulator (S3, SageMaker models, endpoints, SSM over HTTP).

Inference components and UpdateEndpoint are not implemented by moto 5.2.5; those calls are checked against botocore's
API model and answered by ``stand_ins.SageMakerWithComponents`` (tests say so in their names). The handler runs
in-process with realistic EventBridge events (Lambda itself needs Docker, absent here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from loraops import endpoints, s3_layout
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.deployment import Deployer
from loraops.endpoints import ServingTarget
from loraops.naming import OutputMode
from loraops.packages import Package
from tests.helpers import fast_args
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, MERGED_GROUP, MODEL_ID, REGION, load_handler
from tests.registry.stand_ins import CallRecorder, SageMakerWithComponents

PREFIX = "loraops-test"
ROLE = "arn:aws:iam::123456789012:role/loraops-test-sagemaker-execution"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"


def _train(tiny_base: Path, tmp_path_factory, mode: str) -> Path:
    from loraops_trainer.cli import main

    out = tmp_path_factory.mktemp(f"job-{mode}") / "model"
    assert main(fast_args(tiny_base, out, max_steps=2, sample_generations=0, output_mode=mode)) == 0
    return out


@pytest.fixture(scope="module")
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
def world(registry, aws, emulator, tiny_base, outputs):
    """An approved base, an adapter and a merged fine-tune pending approval, the clients a deployment uses."""
    base = registry.decide(import_base(registry, LocalFolder(tiny_base), MODEL_ID).arn, approve=True)
    adapter = _register(registry, aws, outputs["adapter"], OutputMode.ADAPTER, ADAPTER_GROUP, "loraops-a-1")
    merged = _register(registry, aws, outputs["merged"], OutputMode.MERGED, MERGED_GROUP, "loraops-m-1")
    sagemaker = SageMakerWithComponents(registry.sagemaker)
    registry.sagemaker = sagemaker
    ssm = boto3.client("ssm", endpoint_url=emulator, region_name=REGION, config=Config(retries={"max_attempts": 1}))
    return {"base": base, "adapter": adapter, "merged": merged, "sagemaker": sagemaker, "ssm": ssm}


def _components_endpoint(world, base_prefix: str) -> Deployer:
    """The inference-components endpoint the serving stack makes: the base model and the base component."""
    sagemaker = world["sagemaker"]
    _model(sagemaker, f"{PREFIX}-base-model", base_prefix)
    target = ServingTarget(PREFIX, "inference-components", endpoints.endpoint_name(PREFIX))
    sagemaker.create_inference_component(
        InferenceComponentName=target.base_component,
        EndpointName=target.endpoint,
        VariantName=endpoints.VARIANT,
        Specification={
            "ModelName": f"{PREFIX}-base-model",
            "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": 16384},
        },
        RuntimeConfig={"CopyCount": 1},
    )
    return Deployer(world["registry"] if "registry" in world else None, world["ssm"], target)


@pytest.fixture
def components(world, registry):
    world["registry"] = registry
    return _components_endpoint(world, world["base"].model_data_prefix)


def _event(package: Package, status: str, package_status: str = "Completed") -> dict:
    """The EventBridge event SageMaker sends when a model package changes (its detail is DescribeModelPackage's)."""
    return {
        "version": "0",
        "id": "7e0c7a3a-0000-0000-0000-000000000000",
        "detail-type": "SageMaker Model Package State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-11-29T08:00:00Z",
        "region": REGION,
        "resources": [package.arn],
        "detail": {
            "ModelPackageGroupName": package.group,
            "ModelPackageVersion": package.version,
            "ModelPackageArn": package.arn,
            "ModelApprovalStatus": status,
            "ModelPackageStatus": package_status,
            "CustomerMetadataProperties": package.metadata,
            "InferenceSpecification": {
                "Containers": [
                    {
                        "Image": IMAGE,
                        "ModelDataSource": {
                            "S3DataSource": {
                                "S3Uri": f"s3://{BUCKET}/{package.model_data_prefix}",
                                "S3DataType": "S3Prefix",
                                "CompressionType": "None",
                            }
                        },
                    }
                ]
            },
        },
    }


def test_approved_adapter_becomes_a_component_without_reading_the_base_inference_component_calls_checked_against_botocore(  # noqa: E501
    registry, aws, world, components
):
    function = load_handler("deploy_on_approval")
    adapter = registry.decide(world["adapter"].arn, approve=True)
    base_before = {o["Key"]: o["ETag"] for o in registry.objects(world["base"].model_data_prefix)}
    recorder = CallRecorder(aws["s3"], registry.sagemaker._client, world["ssm"])

    result = function.deploy(function.EventBridgeEvent(_event(adapter, "Approved")), components)

    name = endpoints.component_name(PREFIX, ADAPTER_GROUP)
    assert result["action"] == "created" and result["detail"] == name
    component = world["sagemaker"].components[name]
    assert component["Specification"] == {
        "BaseInferenceComponentName": components.target.base_component,
        # one gzip-compressed tar, as InferenceComponentContainerSpecification.ArtifactUrl requires
        "Container": {"ArtifactUrl": f"s3://{BUCKET}/{adapter.model_data_prefix}{s3_layout.ADAPTER_ARCHIVE}"},
    }
    assert "ComputeResourceRequirements" not in component["Specification"]  # an adapter takes the base's compute
    # The base is only named, never read, copied or re-uploaded; the adapter is only read, to verify its digests.
    s3_calls = recorder.of("s3")
    assert {op for op, _ in s3_calls} <= {"GetObject", "HeadObject", "ListObjectsV2"}
    assert s3_calls and all(
        adapter.model_data_prefix in str(params) and f"/{s3_layout.BASE}" not in str(params) for _, params in s3_calls
    )
    assert [op for op, _ in recorder.of("sagemaker")] == [
        "DescribeModelPackage",
        "DescribeInferenceComponent",
        "DescribeModel",
        "ListModelPackages",  # the served base's package, found by the content digest its prefix is named by
        "DescribeModelPackage",
        "DescribeInferenceComponent",
        "CreateInferenceComponent",
    ]
    assert {o["Key"]: o["ETag"] for o in registry.objects(world["base"].model_data_prefix)} == base_before

    again = function.deploy(function.EventBridgeEvent(_event(adapter, "Approved")), components)
    assert again["action"] == "none"  # a repeated event changes nothing


def _other_bytes(folder: Path, tmp_path: Path) -> Path:
    """A copy of a job's output with one more file, listed in its manifest: the same adapter, other bytes."""
    import json
    import shutil

    from loraops.manifest import MANIFEST_FILE, file_digest

    copy = tmp_path / "other"
    shutil.copytree(folder, copy)
    (copy / "NOTES.txt").write_text("a second run\n")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"]["NOTES.txt"] = file_digest(copy / "NOTES.txt")
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    return copy


def test_a_newer_adapter_version_updates_its_component_and_rejection_removes_it_inference_component_calls_checked_against_botocore(  # noqa: E501
    registry, aws, world, components, outputs, tmp_path
):
    first = registry.decide(world["adapter"].arn, approve=True)
    assert components.apply(first.arn)["action"] == "created"
    other = _other_bytes(outputs["adapter"], tmp_path)
    second = _register(registry, aws, other, OutputMode.ADAPTER, ADAPTER_GROUP, "loraops-a-2")
    assert second.model_data_prefix != first.model_data_prefix  # other bytes: another version at another prefix
    second = registry.decide(second.arn, approve=True)
    assert components.apply(second.arn)["action"] == "updated"
    name = endpoints.component_name(PREFIX, ADAPTER_GROUP)
    served = world["sagemaker"].components[name]["Specification"]["Container"]["ArtifactUrl"]
    assert served == f"s3://{BUCKET}/{second.model_data_prefix}{s3_layout.ADAPTER_ARCHIVE}"

    registry.decide(first.arn, approve=False, reason="regressed")
    assert components.apply(first.arn)["action"] == "none"  # not what the component serves: left alone
    registry.decide(second.arn, approve=False, reason="regressed")
    assert components.apply(second.arn)["action"] == "removed"
    assert name not in world["sagemaker"].components


def test_an_adapter_changed_after_registration_is_not_served_inference_component_calls_checked_against_botocore(  # noqa: E501
    registry, aws, world, components
):
    adapter = registry.decide(world["adapter"].arn, approve=True)
    key = adapter.model_data_prefix + "adapter_model.safetensors"
    body = aws["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=body[:-4] + b"\0\0\0\1")  # same size, other bytes
    function = load_handler("deploy_on_approval")

    result = function.deploy(function.EventBridgeEvent(_event(adapter, "Approved")), components)

    assert (
        result["action"] == "refused"
        and "adapter_model.safetensors changed since it was registered" in result["detail"]
    )
    assert list(world["sagemaker"].components) == [components.target.base_component]


def test_an_adapter_of_other_base_weights_is_refused_and_nothing_changes_inference_component_calls_checked_against_botocore(  # noqa: E501
    registry, world
):
    other_base = s3_layout.base_model_prefix(world["base"].group, "sha256:" + "0" * 64)
    deployer = _components_endpoint({**world, "registry": registry}, other_base)
    adapter = registry.decide(world["adapter"].arn, approve=True)
    function = load_handler("deploy_on_approval")

    result = function.deploy(function.EventBridgeEvent(_event(adapter, "Approved")), deployer)

    assert result["action"] == "refused"
    assert adapter.metadata["baseWeightsDigest"] in result["detail"] and "sha256:" + "0" * 64 in result["detail"]
    assert list(world["sagemaker"].components) == [deployer.target.base_component]


def test_a_deleted_package_is_taken_from_the_event_and_its_component_removed_inference_component_calls_checked_against_botocore(  # noqa: E501
    registry, world, components
):
    adapter = registry.decide(world["adapter"].arn, approve=True)
    components.apply(adapter.arn)
    # moto lacks DeleteModelPackage: the deleted version is one the registry no longer knows (an unknown ARN),
    # whose event (DescribeModelPackage's shape) names the prefix the component serves.
    gone = dataclasses.replace(adapter, arn=adapter.arn.rsplit("/", 1)[0] + "/99", version=99)

    result = components.apply(gone.arn, _event(gone, "Approved", package_status="Deleting")["detail"])

    assert result["action"] == "removed"
    assert endpoints.component_name(PREFIX, ADAPTER_GROUP) not in world["sagemaker"].components


def test_approved_merged_model_rolls_the_endpoint_blue_green_update_endpoint_checked_against_botocore(registry, world):
    sagemaker = world["sagemaker"]
    _model(sagemaker, f"{PREFIX}-model", world["base"].model_data_prefix)
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{PREFIX}-config",
        ProductionVariants=[
            {
                "VariantName": "main",
                "ModelName": f"{PREFIX}-model",
                "InstanceType": "ml.m5.xlarge",
                "InitialInstanceCount": 1,
            }
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 20,
            "DestinationS3Uri": f"s3://{BUCKET}/capture/",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    target = ServingTarget(PREFIX, "endpoint", endpoints.endpoint_name(PREFIX), ("p90-latency", "5xx-errors"))
    sagemaker.create_endpoint(EndpointName=target.endpoint, EndpointConfigName=f"{PREFIX}-config")
    deployer = Deployer(registry, world["ssm"], target)
    merged = registry.decide(world["merged"].arn, approve=True)

    result = deployer.apply(merged.arn)

    assert result["action"] == "rolled"
    (update,) = sagemaker.endpoint_updates
    assert update["DeploymentConfig"] == endpoints.blue_green(["p90-latency", "5xx-errors"])
    config = sagemaker.describe_endpoint_config(EndpointConfigName=update["EndpointConfigName"])
    assert config["DataCaptureConfig"]["DestinationS3Uri"] == f"s3://{BUCKET}/capture/"  # the rest is kept
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert (
        model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
        == f"s3://{BUCKET}/{merged.model_data_prefix}"
    )
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    parameter = world["ssm"].get_parameter(Name=endpoints.served_model_parameter(PREFIX))["Parameter"]["Value"]
    assert parameter == merged.model_data_prefix

    registry.decide(merged.arn, approve=False, reason="regressed")
    kept = deployer.apply(merged.arn)
    assert kept["action"] == "kept" and "approve another version" in kept["detail"]


def test_adapters_are_refused_by_an_endpoint_that_serves_one_model(registry, world):
    deployer = Deployer(registry, world["ssm"], ServingTarget(PREFIX, "endpoint", endpoints.endpoint_name(PREFIX)))
    adapter = registry.decide(world["adapter"].arn, approve=True)
    function = load_handler("deploy_on_approval")
    result = function.deploy(function.EventBridgeEvent(_event(adapter, "Approved")), deployer)
    assert result["action"] == "refused" and "inference-components" in result["detail"]


def test_serve_pin_records_only_an_approved_base_or_merged_package(registry, world, emulator, capsys):
    from loraops.cli import main

    def pin(arn: str) -> tuple[int, str]:
        code = main(
            [
                "serve",
                "pin",
                arn,
                "--prefix",
                PREFIX,
                "--bucket",
                BUCKET,
                "--region",
                REGION,
                "--endpoint-url",
                emulator,
            ]
        )
        out, err = capsys.readouterr()
        return code, out + err

    code, message = pin(world["merged"].arn)
    assert code == 1 and "PendingManualApproval" in message and "only approved packages" in message
    adapter = registry.decide(world["adapter"].arn, approve=True)
    code, message = pin(adapter.arn)
    assert code == 1 and "is an adapter" in message
    with pytest.raises(world["ssm"].exceptions.ParameterNotFound):  # refusals wrote nothing
        world["ssm"].get_parameter(Name=endpoints.served_model_parameter(PREFIX))

    code, message = pin(world["base"].arn)
    assert code == 0, message
    value = world["ssm"].get_parameter(Name=endpoints.served_model_parameter(PREFIX))["Parameter"]["Value"]
    assert value == world["base"].model_data_prefix and value.startswith(s3_layout.BASE)
