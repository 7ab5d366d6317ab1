"""Serving: the environment's endpoint, straight from the registry's uncompressed S3 prefixes.

- **Model**: the serving image (LMI from the SDK's image table; or, with engine ``loraops``, that image plus
  ``loraops_serving``), ``ModelDataSource`` = the prefix recorded in SSM by ``loraops serve pin`` (read at deploy time
  through a CloudFormation SSM parameter), in the VPC, network-isolated.
- **Endpoint config** with data capture (KMS) and, where the instance type has no local NVMe, a KMS volume key.
- **Endpoint** updated blue/green, rolled back by the latency and 5xx alarms.
- **Inference-components mode**: the model is the base component; the deploy-on-approval function
  (``infra.serving.deploy_on_approval``, deployed in the registration stack) adds one adapter component per approved
  adapter line (``BaseInferenceComponentName`` + ``ArtifactUrl``).
- **Autoscaling** of instances (endpoint mode) or base-component copies, on invocations per instance / copy.
- **Capacity** (inference-components mode): every merged line gets a component with the base's compute, so the
  instances ``max_instances`` allows must hold the base's copies and one copy per merged line
  (:func:`infra.serving.capacity.component_capacity`); synth fails with the numbers otherwise, and base copies
  autoscale only into what is left.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.image_build import REPO_ROOT, SERVING, repository_image
from infra.nag import skip_checkov
from infra.parts import policies
from infra.parts.instances import has_local_nvme
from infra.props import Placement
from infra.serving.capacity import component_capacity
from infra.serving.props import ServingProps
from loraops import endpoints, s3_layout
from loraops.images import image_uri

SERVING_CONTAINER = REPO_ROOT / "serving_container"
#: The DJL entry module the loraops image installs (serving_container/Dockerfile).
DJL_ENTRY_MODULE = "loraops_djl_model"


def from_api(resource: cdk.CfnResource, request: dict[str, Any]) -> cdk.CfnResource:
    """Set ``request`` (SageMaker API shape, which these CloudFormation types share) as the resource's properties.
    The L1 classes' typed arguments drop fields they do not know (ContainerDefinition.ModelDataSource), raw
    properties do not."""
    for key, value in request.items():
        resource.add_property_override(key, value)
    return resource


class ServingStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        props: ServingProps,
        key: kms.IKey,
        placement: Placement,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        assert props.serving is not None
        serving, prefix = props.serving, props.prefix
        self.endpoint_name = endpoints.endpoint_name(prefix)
        served = cdk.CfnParameter(
            self,
            "ServedModelPrefix",
            type="AWS::SSM::Parameter::Value<String>",
            default=endpoints.served_model_parameter(prefix),
            description="SSM parameter with the S3 key prefix the endpoint serves (set by `loraops serve pin`)",
        )
        role_arn = policies.role_arn(self, props.execution_role_name)
        bucket = props.artifact_bucket_name
        network = {
            "VpcConfig": {
                "SecurityGroupIds": [placement.security_group.security_group_id],
                "Subnets": [subnet.subnet_id for subnet in placement.subnets],
            },
            "EnableNetworkIsolation": True,
        }
        self.model = from_api(
            sagemaker.CfnModel(self, "Model", execution_role_arn=role_arn),
            {
                "PrimaryContainer": {
                    "Image": self._image(props),
                    "Environment": self._environment(serving.engine),
                    "ModelDataSource": s3_layout.model_data_source(
                        cdk.Fn.sub("s3://${Bucket}/${Prefix}", {"Bucket": bucket, "Prefix": served.value_as_string})
                    ),
                },
                **network,
            },
        )
        components = serving.mode == endpoints.INFERENCE_COMPONENTS
        self.max_base_copies = component_capacity(props) if components else None
        variant: dict[str, Any] = {
            "VariantName": endpoints.VARIANT,
            "InstanceType": props.serving_instance_type,
            "InitialInstanceCount": serving.min_instances,
            "ModelDataDownloadTimeoutInSeconds": 1800,
            "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
        }
        if components:
            variant |= {
                "ManagedInstanceScaling": {
                    "Status": "ENABLED",
                    "MinInstanceCount": serving.min_instances,
                    "MaxInstanceCount": serving.max_instances,
                },
                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
            }
        else:
            variant |= {"ModelName": self.model.attr_model_name, "InitialVariantWeight": 1.0}
        config_request: dict[str, Any] = {
            "ProductionVariants": [variant],
            "DataCaptureConfig": {
                "EnableCapture": serving.capture_percent > 0,
                "InitialSamplingPercentage": serving.capture_percent,
                "DestinationS3Uri": f"s3://{bucket}/{s3_layout.CAPTURE}{self.endpoint_name}/",
                "KmsKeyId": key.key_arn,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
            },
        }
        if not has_local_nvme(props.serving_instance_type):
            config_request["KmsKeyId"] = key.key_arn
        if components:  # no model in the variant: the endpoint itself needs the role and the network
            config_request |= {"ExecutionRoleArn": role_arn, **network}
        self.endpoint_config = from_api(
            sagemaker.CfnEndpointConfig(self, "EndpointConfig", production_variants=[]), config_request
        )
        if has_local_nvme(props.serving_instance_type):
            skip_checkov(
                self.endpoint_config,
                {
                    "CKV_AWS_98": f"{props.serving_instance_type} has local NVMe storage: SageMaker refuses a "
                    "volume KMS key there and encrypts that storage itself."
                },
            )
        self.alarms = self._alarms(prefix, serving.latency_alarm_ms)
        self.endpoint = from_api(
            sagemaker.CfnEndpoint(
                self, "Endpoint", endpoint_config_name=self.endpoint_config.attr_endpoint_config_name
            ),
            {
                "EndpointName": self.endpoint_name,
                "DeploymentConfig": endpoints.blue_green([a.alarm_name for a in self.alarms]),
            },
        )
        self.base_component: sagemaker.CfnInferenceComponent | None = None
        if components:
            self.base_component = from_api(
                sagemaker.CfnInferenceComponent(
                    self, "BaseComponent", endpoint_name=self.endpoint.attr_endpoint_name, specification={}
                ),
                {
                    "InferenceComponentName": endpoints.base_component_name(prefix),
                    "VariantName": endpoints.VARIANT,
                    "Specification": {
                        "ModelName": self.model.attr_model_name,
                        "ComputeResourceRequirements": {
                            "NumberOfAcceleratorDevicesRequired": serving.accelerators_per_copy,
                            "MinMemoryRequiredInMb": serving.memory_per_copy_mb,
                        },
                    },
                    "RuntimeConfig": {"CopyCount": serving.min_instances},
                },
            )
        self._autoscaling(props)
        cdk.CfnOutput(self, "EndpointName", value=self.endpoint_name)

    @staticmethod
    def _environment(engine: str) -> dict[str, str]:
        environment = endpoints.engine_environment(engine, SERVING_CONTAINER)
        if engine == endpoints.LORAOPS:
            environment["OPTION_ENTRYPOINT"] = DJL_ENTRY_MODULE
        return environment

    def _image(self, props: ServingProps) -> str:
        base = image_uri("serving", props.region)
        if props.serving.engine == endpoints.VLLM:
            return base
        return repository_image(self, "ServingImage", SERVING, base).image_uri

    def _alarms(self, prefix: str, latency_ms: int) -> list[cloudwatch.Alarm]:
        """p90 model latency above the limit on 3 of 5 minutes; any 5xx on 2 of 3 minutes."""
        dimensions = {"EndpointName": self.endpoint_name, "VariantName": endpoints.VARIANT}
        latency_name, errors_name = endpoints.rollback_alarm_names(prefix)
        specs = [
            (
                "LatencyAlarm",
                latency_name,
                "ModelLatency",
                "p90",
                latency_ms * 1000,
                (5, 3),
                "p90 model latency above the rollout limit",
            ),  # ModelLatency is in microseconds
            ("ErrorsAlarm", errors_name, "Invocation5XXErrors", "Sum", 0, (3, 2), "the model answers 5xx"),
        ]
        return [
            cloudwatch.Alarm(
                self,
                construct_id,
                alarm_name=name,
                alarm_description=f"{what}: a blue/green update rolls back",
                metric=cloudwatch.Metric(
                    namespace="AWS/SageMaker",
                    metric_name=metric,
                    dimensions_map=dimensions,
                    statistic=statistic,
                    period=cdk.Duration.minutes(1),
                ),
                threshold=threshold,
                evaluation_periods=periods,
                datapoints_to_alarm=datapoints,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            for construct_id, name, metric, statistic, threshold, (periods, datapoints), what in specs
        ]

    def _autoscaling(self, props: ServingProps) -> None:
        serving = props.serving
        if self.base_component is not None:
            resource = f"inference-component/{endpoints.base_component_name(props.prefix)}"
            dimension, metric = (
                "sagemaker:inference-component:DesiredCopyCount",
                autoscaling.PredefinedMetric.SAGEMAKER_INFERENCE_COMPONENT_INVOCATIONS_PER_COPY,
            )
            owner: cdk.CfnResource = self.base_component
        else:
            resource = f"endpoint/{self.endpoint_name}/variant/{endpoints.VARIANT}"
            dimension, metric = (
                "sagemaker:variant:DesiredInstanceCount",
                autoscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            )
            owner = self.endpoint
        target = autoscaling.ScalableTarget(
            self,
            "ScalableTarget",
            service_namespace=autoscaling.ServiceNamespace.SAGEMAKER,
            resource_id=resource,
            scalable_dimension=dimension,
            min_capacity=serving.min_instances,
            max_capacity=self.max_base_copies or serving.max_instances,
        )
        target.node.add_dependency(owner)
        target.scale_to_track_metric(
            "Invocations",
            target_value=serving.invocations_per_target,
            predefined_metric=metric,
            scale_in_cooldown=cdk.Duration.minutes(10),
            scale_out_cooldown=cdk.Duration.minutes(2),
        )
