"""The deploy-on-approval function's adapter deployments against the local AWS emulator (S3, SageMaker models,
endpoints, SSM over HTTP): an approved adapter becomes its group's inference component without reading the base, a
newer version updates it and a rejection or deletion removes it; a changed adapter or one of other base weights is
refused, and so is any adapter on an endpoint that serves one model.

Inference components are not implemented by moto 5.2.5; those calls are checked against botocore's API model and
answered by ``stand_ins.SageMakerWithComponents`` (tests say so in their names). The handler runs in-process with
realistic EventBridge events (Lambda itself needs Docker, absent here). The world is in conftest.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loraops import endpoints, s3_layout
from loraops.deployment import Deployer
from loraops.endpoints import ServingTarget
from loraops.naming import OutputMode
from loraops.packages import Package
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, IMAGE, PREFIX, REGION, _model, _register, load_handler
from tests.registry.stand_ins import CallRecorder


@pytest.fixture
def world(deployment_world):
    """conftest.py's deployment_world, under the name these tests use."""
    return deployment_world


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


def test_adapters_are_refused_by_an_endpoint_that_serves_one_model(registry, world):
    deployer = Deployer(registry, world["ssm"], ServingTarget(PREFIX, "endpoint", endpoints.endpoint_name(PREFIX)))
    adapter = registry.decide(world["adapter"].arn, approve=True)
    function = load_handler("deploy_on_approval")
    result = function.deploy(function.EventBridgeEvent(_event(adapter, "Approved")), deployer)
    assert result["action"] == "refused" and "inference-components" in result["detail"]
