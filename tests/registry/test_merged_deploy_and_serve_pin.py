"""A merged model's approval rolls the endpoint blue/green (UpdateEndpoint is not implemented by moto 5.2.5: checked
against botocore's API model and answered by ``stand_ins.SageMakerWithComponents``), and ``loraops serve pin`` records
only an approved base or merged package. Against the local AWS emulator, in conftest.py's deployment world."""

from __future__ import annotations

import pytest

from loraops import endpoints, s3_layout
from loraops.deployment import Deployer
from loraops.endpoints import ServingTarget
from tests.registry.conftest import BUCKET, IMAGE, PREFIX, REGION, ROLE, _model


@pytest.fixture
def world(deployment_world):
    """conftest.py's deployment_world, under the name these tests use."""
    return deployment_world


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
