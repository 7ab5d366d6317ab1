"""The serving stack in both modes, the deploy-on-approval function's wiring, and the serving permissions.

cdk.json's environments use inference components; endpoint mode with the loraops engine is synthesized from a
changed copy of the context (with the nag gate, like every synth here).
"""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Template

from infra.app_factory import build_app, serving_props
from infra.config import ConfigError, load_environments
from infra.serving.capacity import accelerators, component_capacity
from infra.stacks.serving import DJL_ENTRY_MODULE
from loraops import endpoints, s3_layout
from loraops.events import package_state_changed
from loraops.images import image_uri
from tests.infra.conftest import ENVIRONMENTS


def _one(template: Template, type_: str) -> dict:
    (resource,) = template.find_resources(type_).values()
    return resource["Properties"]


@pytest.fixture(scope="module")
def endpoint_mode(cdk_context, tmp_path_factory) -> tuple[Template, Template]:
    """dev with one model behind the endpoint, the loraops engine and an instance type without local NVMe."""
    context = json.loads(json.dumps(cdk_context))
    dev = context["loraops:environments"]["dev"]
    dev["serving"] = {"mode": "endpoint", "engine": "loraops", "min_instances": 1, "max_instances": 3}
    dev["serving_instance_type"] = "ml.m5.2xlarge"
    context["env"] = "dev"
    app, environments = build_app(context=context, outdir=str(tmp_path_factory.mktemp("cdk.out")))
    app.synth()
    (env,) = environments
    return Template.from_stack(env.serving), Template.from_stack(env.registration)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_components_mode_serves_the_pinned_prefix_from_s3(env, templates, synthesized):
    config = synthesized[env].config
    t = templates[(env, "serving")]
    parameter = t.to_json()["Parameters"]["ServedModelPrefix"]
    assert parameter == {
        "Type": "AWS::SSM::Parameter::Value<String>",
        "Default": endpoints.served_model_parameter(config.prefix),
        "Description": parameter["Description"],
    }
    model = _one(t, "AWS::SageMaker::Model")
    container = model["PrimaryContainer"]
    assert container["Image"] == image_uri("serving", config.region)
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": {
            "Fn::Sub": [
                "s3://${Bucket}/${Prefix}",
                {"Bucket": config.artifact_bucket_name, "Prefix": {"Ref": "ServedModelPrefix"}},
            ]
        },
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    assert container["Environment"]["OPTION_ENABLE_LORA"] == "true"  # from vllm.properties
    assert container["Environment"]["OPTION_MAX_LORA_RANK"] == "64"
    assert model["EnableNetworkIsolation"] is True and model["VpcConfig"]["Subnets"]
    assert model["ExecutionRoleArn"] == f"arn:aws:iam::{config.account}:role/{config.execution_role_name}"

    endpoint_config = _one(t, "AWS::SageMaker::EndpointConfig")
    (variant,) = endpoint_config["ProductionVariants"]
    assert "ModelName" not in variant  # inference components carry the models
    assert variant["ManagedInstanceScaling"] == {
        "Status": "ENABLED",
        "MinInstanceCount": config.serving.min_instances,
        "MaxInstanceCount": config.serving.max_instances,
    }
    assert endpoint_config["ExecutionRoleArn"] and endpoint_config["EnableNetworkIsolation"] is True
    capture = endpoint_config["DataCaptureConfig"]
    assert capture["InitialSamplingPercentage"] == config.serving.capture_percent and capture["KmsKeyId"]
    assert capture["DestinationS3Uri"].startswith(f"s3://{config.artifact_bucket_name}/{s3_layout.CAPTURE}")
    assert "KmsKeyId" not in endpoint_config  # g5 has local NVMe: SageMaker refuses a volume key there

    component = _one(t, "AWS::SageMaker::InferenceComponent")
    assert component["InferenceComponentName"] == endpoints.base_component_name(config.prefix)
    assert component["Specification"]["ModelName"] == {
        "Fn::GetAtt": [_logical(t, "AWS::SageMaker::Model"), "ModelName"]
    }
    assert component["Specification"]["ComputeResourceRequirements"]["NumberOfAcceleratorDevicesRequired"] == 1
    target = _one(t, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ResourceId"] == f"inference-component/{endpoints.base_component_name(config.prefix)}"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    policy = _one(t, "AWS::ApplicationAutoScaling::ScalingPolicy")
    metric = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "SageMakerInferenceComponentInvocationsPerCopy"


def _logical(t: Template, type_: str) -> str:
    (logical_id,) = t.find_resources(type_)
    return logical_id


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_endpoint_rolls_blue_green_back_on_its_alarms(env, templates, synthesized):
    config = synthesized[env].config
    t = templates[(env, "serving")]
    endpoint = _one(t, "AWS::SageMaker::Endpoint")
    assert endpoint["EndpointName"] == endpoints.endpoint_name(config.prefix)
    names = endpoints.rollback_alarm_names(config.prefix)
    found = t.find_resources("AWS::CloudWatch::Alarm")
    by_logical_id = {logical_id: a["Properties"]["AlarmName"] for logical_id, a in found.items()}
    rollback = endpoint["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    resolved = [{"AlarmName": by_logical_id[a["AlarmName"]["Ref"]]} for a in rollback]  # Refs: alarms exist first
    expected = endpoints.blue_green(names)
    assert endpoint["DeploymentConfig"]["BlueGreenUpdatePolicy"] == expected["BlueGreenUpdatePolicy"]
    assert resolved == expected["AutoRollbackConfiguration"]["Alarms"]
    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in found.values()}
    assert sorted(alarms) == sorted(names)
    latency = alarms[names[0]]
    assert latency["MetricName"] == "ModelLatency" and latency["ExtendedStatistic"] == "p90"
    assert latency["Threshold"] == config.serving.latency_alarm_ms * 1000
    assert {d["Name"]: d["Value"] for d in latency["Dimensions"]} == {
        "EndpointName": endpoints.endpoint_name(config.prefix),
        "VariantName": endpoints.VARIANT,
    }
    assert alarms[names[1]]["MetricName"] == "Invocation5XXErrors"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_deploy_function_follows_the_lines_package_changes(env, templates, synthesized):
    config = synthesized[env].config
    t = templates[(env, "registration")]
    functions = {
        r["Properties"]["FunctionName"]: r["Properties"] for r in t.find_resources("AWS::Lambda::Function").values()
    }
    function = functions[f"{config.prefix}-deploy-on-approval"]
    variables = function["Environment"]["Variables"]
    assert variables["SERVING_MODE"] == config.serving.mode
    assert variables["ENDPOINT_NAME"] == endpoints.endpoint_name(config.prefix)
    assert variables["ROLLBACK_ALARMS"].split(",") == endpoints.rollback_alarm_names(config.prefix)
    assert function["ReservedConcurrentExecutions"] == 1  # deployments never overlap on one endpoint
    (rule,) = [
        r["Properties"]
        for r in t.find_resources("AWS::Events::Rule").values()
        if r["Properties"]["EventPattern"]["detail-type"] == ["SageMaker Model Package State Change"]
    ]
    assert rule["EventPattern"] == package_state_changed(
        [line.group_name(config.base_model_id) for line in config.fine_tuned_lines]
    )
    policies = t.find_resources("AWS::IAM::Policy")
    (policy,) = [p for logical_id, p in policies.items() if logical_id.startswith("DeployOnApprovalPolicy")]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    actions = {a for s in statements.values() for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert "sagemaker:CreateModelPackage" not in actions
    # it reads the registered fine-tune versions to verify their registered digests, never the base
    reads = [s["Resource"] for s in statements.values() if "s3:GetObject" in json.dumps(s["Action"])]
    assert reads and all(json.dumps(r).rstrip('"]}').endswith("/finetuned/*") for r in reads), reads
    assert all(json.dumps(r).endswith(f'/{config.prefix}-*"') for r in statements["DeployModels"]["Resource"])


def test_endpoint_mode_serves_one_model_with_the_loraops_image(endpoint_mode):
    serving, registration = endpoint_mode
    endpoint_config = _one(serving, "AWS::SageMaker::EndpointConfig")
    (variant,) = endpoint_config["ProductionVariants"]
    assert variant["ModelName"] == {"Fn::GetAtt": [_logical(serving, "AWS::SageMaker::Model"), "ModelName"]}
    assert "ManagedInstanceScaling" not in variant and "ExecutionRoleArn" not in endpoint_config
    assert endpoint_config["KmsKeyId"]  # m5 has no local NVMe: the volume is encrypted with the artifact key
    assert not serving.find_resources("AWS::SageMaker::InferenceComponent")
    container = _one(serving, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert container["Environment"]["OPTION_ENTRYPOINT"] == DJL_ENTRY_MODULE
    assert container["Environment"]["SERVING_BATCH_SIZE"] == "1"  # serving.properties: one request per call
    assert "Fn::Sub" in container["Image"] or "cdk-hnb659fds-container-assets" in json.dumps(container["Image"])
    target = _one(serving, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ResourceId"] == f"endpoint/{endpoints.endpoint_name('loraops-dev')}/variant/{endpoints.VARIANT}"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    (function,) = [
        f["Properties"]
        for f in registration.find_resources("AWS::Lambda::Function").values()
        if f["Properties"]["FunctionName"] == "loraops-dev-deploy-on-approval"
    ]
    assert function["Environment"]["Variables"]["SERVING_MODE"] == "endpoint"


SERVING_CHANGES = {
    f"sagemaker:{verb}{resource}"
    for verb in ("Create", "Update", "Delete")
    for resource in ("Model", "EndpointConfig", "Endpoint", "InferenceComponent")
} - {"sagemaker:UpdateModel", "sagemaker:UpdateEndpointConfig"}


def _identity_policies(template) -> dict[str, list[dict]]:
    """Logical id -> statements of every identity policy of a template (policies and roles' inline policies)."""
    found = {}
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for logical_id, policy in template.find_resources(kind).items():
            found[logical_id] = policy["Properties"]["PolicyDocument"]["Statement"]
    for logical_id, role in template.find_resources("AWS::IAM::Role").items():
        for inline in role["Properties"].get("Policies", []):
            found[f"{logical_id}/{inline['PolicyName']}"] = inline["PolicyDocument"]["Statement"]
    return found


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_only_the_approval_path_may_change_serving(env, templates):
    """No identity the stacks create may create, update or delete models, endpoint configs, endpoints or inference
    components, except the deploy-on-approval function's role (explicit Denies aside)."""
    allowed = {}
    for (name, concern), template in templates.items():
        if name != env:
            continue
        for logical_id, statements in _identity_policies(template).items():
            actions = {
                action
                for statement in statements
                if statement["Effect"] == "Allow"
                for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
            }
            if actions & SERVING_CHANGES:
                allowed[f"{concern}/{logical_id}"] = sorted(actions & SERVING_CHANGES)
    assert [key.split("/")[1] for key in allowed] and all(
        key.startswith("registration/DeployOnApprovalPolicy") for key in allowed
    ), allowed


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        ({"mode": "inference-components", "engine": "loraops"}, "use mode 'endpoint' with it"),
        ({"min_instances": 3, "max_instances": 2}, "max_instances is below min_instances"),
        ({"capture_percent": 101}, "serving.capture_percent"),
        ({"mode": "serverless"}, "serving.mode"),
    ],
)
def test_bad_serving_settings_name_the_key(context_copy, serving, message):
    context_copy["loraops:environments"]["dev"]["serving"] = serving
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_environments(context_copy, "dev")


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("loraops-dev", "llm"), "loraops-dev-llm"),
        (("loraops-dev", "meta-llama--Llama-2-7b-hf-finetuned-instruction-following"), None),
    ],
)
def test_resource_names_fit_sagemaker(parts, expected):
    name = endpoints.resource_name(*parts)
    assert len(name) <= 63 and "--" not in name
    if expected:
        assert name == expected
    else:  # long names keep a hash of the whole, so two long lines stay distinct
        other = endpoints.resource_name(parts[0], parts[1].replace("instruction", "summarisation"))
        assert other != name


def test_properties_become_container_environment():
    text = "# comment\nengine=Python\noption.entryPoint=model.py\noption.max_lora_rank=64\nbatch_size=16\n"
    assert endpoints.properties_environment(text) == {
        "OPTION_ENTRYPOINT": "model.py",
        "OPTION_MAX_LORA_RANK": "64",
        "SERVING_BATCH_SIZE": "16",
    }
    with pytest.raises(ValueError, match="not a property line"):
        endpoints.properties_environment("option.dtype")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_endpoint_holds_the_base_copies_and_every_merged_component(env, templates, synthesized):
    """Managed instance scaling may add instances up to max_instances; base copies autoscale only into what one
    copy per merged line (deploy-on-approval's merged components, the base's compute each) leaves."""
    config = synthesized[env].config
    t = templates[(env, "serving")]
    (variant,) = _one(t, "AWS::SageMaker::EndpointConfig")["ProductionVariants"]
    max_instances = variant["ManagedInstanceScaling"]["MaxInstanceCount"]
    copies = _one(t, "AWS::ApplicationAutoScaling::ScalableTarget")
    merged = sum(1 for line in config.fine_tuned_lines if line.mode.value == "merged")
    per_copy = _one(t, "AWS::SageMaker::InferenceComponent")["Specification"]["ComputeResourceRequirements"]
    slots = max_instances * accelerators(variant["InstanceType"]) // per_copy["NumberOfAcceleratorDevicesRequired"]
    assert copies["MaxCapacity"] + merged <= slots
    assert copies["MinCapacity"] <= copies["MaxCapacity"]
    if env == "dev":  # one g5.2xlarge GPU each: the base's copy and the merged line's component need two instances
        assert (max_instances, copies["MaxCapacity"], merged) == (2, 1, 1)


def test_a_fleet_too_small_for_its_components_fails_synth_with_the_numbers(context_copy):
    raw = context_copy["loraops:environments"]
    raw["dev"]["serving"]["max_instances"] = 1
    (config,) = load_environments(context_copy, selected="dev")
    with pytest.raises(ConfigError) as error:
        component_capacity(serving_props(config))
    assert str(error.value) == (
        "dev.serving: 1 base copy and 1 merged component(s) need 2 copies of 1 accelerator(s), but max_instances 1 "
        "of ml.g5.2xlarge hold 1: raise serving.max_instances in cdk.json"
    )
