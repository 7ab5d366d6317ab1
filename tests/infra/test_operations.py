"""The create actions' IAM guards (issue #21): their conditions hold for what the product itself sends and refuse what
it must not; the execution role creates no models or endpoints; Studio apps run only on the environment's instance
types.

The conditions are evaluated by a small evaluator of the IAM operators they use (``Null``, ``Bool``, ``ArnEquals``,
``ForAllValues:StringEquals``), over the synthesized policies and the requests the product builds: the workflow's
CreateTrainingJob parameters with a real execution input, and ``Deployer``'s CreateModel from the serving stack's
model. CloudFormation tokens become placeholders, the same token the same placeholder in every template.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from loraops.deployment import Deployer
from loraops.endpoints import ServingTarget
from loraops.finetune import FineTuneRequest
from loraops.naming import OutputMode
from tests.infra.conftest import ENVIRONMENTS

_TOKENS: dict[str, str] = {}


def _placeholders(node: Any) -> Any:
    """``node`` with every intrinsic (``Ref``, ``Fn::*``) replaced by one placeholder per distinct token."""
    if isinstance(node, list):
        return [_placeholders(v) for v in node]
    if isinstance(node, dict):
        if len(node) == 1 and (next(iter(node)) == "Ref" or next(iter(node)).startswith("Fn::")):
            if "Fn::Join" in node and node["Fn::Join"][0] == "":
                return "".join(str(_placeholders(p)) for p in node["Fn::Join"][1])
            return _TOKENS.setdefault(json.dumps(node, sort_keys=True), f"TOKEN{len(_TOKENS)}")
        return {k: _placeholders(v) for k, v in node.items()}
    return node


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def allows(conditions: dict[str, dict[str, Any]], context: dict[str, list[str]]) -> bool:
    """Whether IAM would find every condition of a statement true for a request with ``context`` (key -> values;
    an absent key is not in it)."""
    for operator, keys in conditions.items():
        for key, wanted in keys.items():
            present = key in context
            values, wanted = (
                context.get(key, []),
                [str(w).lower() if operator == "Bool" else w for w in _as_list(wanted)],
            )
            if operator == "Null":
                if present == (wanted == ["true"]):
                    return False
            elif operator == "ForAllValues:StringEquals":
                if any(v not in wanted for v in values):
                    return False
            elif operator in ("Bool", "ArnEquals", "StringEquals"):
                if not present or not any(v in wanted for v in values):
                    return False
            else:
                raise AssertionError(f"no evaluator for {operator}")
    return True


def _statement(template, sid: str, logical_prefix: str) -> dict:
    for logical_id, policy in template.find_resources("AWS::IAM::Policy").items():
        if logical_id.startswith(logical_prefix):
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                if statement.get("Sid") == sid:
                    return _placeholders(statement)
    raise AssertionError(f"no statement {sid} in {logical_prefix}*")


def _path(document: dict, path: str) -> Any:
    node = document
    for part in path.removeprefix("$.").split("."):
        node = node[part]
    return node


def _fill(parameters: Any, execution_input: dict) -> Any:
    """ASL ``Parameters`` with ``"Key.$": "$.path"`` taken from the execution input (intrinsics left out)."""
    if isinstance(parameters, list):
        return [_fill(v, execution_input) for v in parameters]
    if not isinstance(parameters, dict):
        return parameters
    filled = {}
    for key, value in parameters.items():
        if key.endswith(".$"):
            if value.startswith("$.") and value.split(".")[1] in execution_input:  # not the workflow's own results
                filled[key[:-2]] = _path(execution_input, value)
        else:
            filled[key] = _fill(value, execution_input)
    return filled


def training_job_context(request: dict) -> dict[str, list[str]]:
    """The condition keys SageMaker sets for a CreateTrainingJob request (absent fields: absent keys)."""
    context: dict[str, list[str]] = {"sagemaker:InstanceTypes": [request["ResourceConfig"]["InstanceType"]]}
    if "VpcConfig" in request:
        context["sagemaker:VpcSubnets"] = request["VpcConfig"]["Subnets"]
        context["sagemaker:VpcSecurityGroupIds"] = request["VpcConfig"]["SecurityGroupIds"]
    for field, key in (
        ("EnableNetworkIsolation", "sagemaker:NetworkIsolation"),
        ("EnableInterContainerTrafficEncryption", "sagemaker:InterContainerTrafficEncryption"),
    ):
        if field in request:
            context[key] = [str(request[field]).lower()]
    if "VolumeKmsKeyId" in request["ResourceConfig"]:
        context["sagemaker:VolumeKmsKey"] = [request["ResourceConfig"]["VolumeKmsKeyId"]]
    if "KmsKeyId" in request.get("OutputDataConfig", {}):
        context["sagemaker:OutputKmsKey"] = [request["OutputDataConfig"]["KmsKeyId"]]
    return context


def model_context(request: dict) -> dict[str, list[str]]:
    context = {}
    if "VpcConfig" in request:
        context["sagemaker:VpcSubnets"] = request["VpcConfig"]["Subnets"]
        context["sagemaker:VpcSecurityGroupIds"] = request["VpcConfig"]["SecurityGroupIds"]
    if "EnableNetworkIsolation" in request:
        context["sagemaker:NetworkIsolation"] = [str(request["EnableNetworkIsolation"]).lower()]
    return context


def _training_request(env, templates, synthesized) -> dict:
    """The CreateTrainingJob request the workflow sends for a default ``loraops finetune start``."""
    config = synthesized[env].config
    (machine,) = templates[(env, "workflow")].find_resources("AWS::StepFunctions::StateMachine").values()
    definition = json.loads(_placeholders(machine["Properties"]["DefinitionString"]))
    request = FineTuneRequest(
        model_id=config.base_model_id,
        training_uri=f"s3://{config.artifact_bucket_name}/datasets/dolly/",
        output_mode=OutputMode.ADAPTER,
        instance_type=config.training_instance_type,
    )
    return _fill(definition["States"]["Train"]["Parameters"], request.execution_input(config.artifact_bucket_name))


def _without(request: dict, *path: str) -> dict:
    copy = json.loads(json.dumps(request))
    node = copy
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return copy


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize(
    ("stack", "sid", "policy"),
    [("workflow", "StartTrainingJobs", "WorkflowPolicy"), ("studio", "CreateGuardedTrainingJobs", "ExecutionPolicy")],
)
def test_training_job_guards_admit_the_workflows_job_and_nothing_looser(
    env, templates, synthesized, stack, sid, policy
):
    statement = _statement(templates[(env, stack)], sid, policy)
    assert statement["Action"] == "sagemaker:CreateTrainingJob"
    request = _training_request(env, templates, synthesized)
    assert allows(statement["Condition"], training_job_context(request))
    looser = {
        "no VpcConfig (ForAllValues alone holds for no subnets)": _without(request, "VpcConfig"),
        "internet access": {**request, "EnableNetworkIsolation": False},
        "no network-isolation field": _without(request, "EnableNetworkIsolation"),
        "unencrypted volumes": _without(request, "ResourceConfig", "VolumeKmsKeyId"),
        "unencrypted output": _without(request, "OutputDataConfig", "KmsKeyId"),
        "another subnet": {**request, "VpcConfig": {**request["VpcConfig"], "Subnets": ["subnet-elsewhere"]}},
        "another security group": {
            **request,
            "VpcConfig": {**request["VpcConfig"], "SecurityGroupIds": ["sg-open"]},
        },
        "an instance type off the list": {
            **request,
            "ResourceConfig": {**request["ResourceConfig"], "InstanceType": "ml.p5.48xlarge"},
        },
    }
    for why, other in looser.items():
        assert not allows(statement["Condition"], training_job_context(other)), why


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_execution_role_creates_no_models_or_endpoints(env, templates):
    """CreateModel/CreateEndpoint(Config) stay the deploy function's: the execution role is denied them."""
    deny = _statement(templates[(env, "studio")], "DenyServingChanges", "ExecutionPolicy")
    assert deny["Effect"] == "Deny" and "Condition" not in deny
    assert {"sagemaker:CreateModel", "sagemaker:CreateEndpointConfig", "sagemaker:CreateEndpoint"} <= set(
        deny["Action"]
    )


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_model(self, **request: Any) -> dict:
        self.calls.append(("CreateModel", request))
        return {}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_deploy_functions_models_are_guarded_and_deployments_models_pass(env, templates, synthesized):
    config = synthesized[env].config
    if config.serving is None:
        pytest.skip("no serving in this environment")
    statement = _statement(templates[(env, "registration")], "CreateGuardedModels", "DeployOnApprovalPolicy")
    assert statement["Action"] == "sagemaker:CreateModel"
    (model,) = templates[(env, "serving")].find_resources("AWS::SageMaker::Model").values()
    served = _placeholders(model["Properties"])  # what DescribeModel answers for the serving model
    recorder = _Recorder()
    deployer = Deployer(
        SimpleNamespace(sagemaker=recorder, bucket=config.artifact_bucket_name),
        ssm=None,
        target=ServingTarget(config.prefix, config.serving.mode, f"{config.prefix}-endpoint"),
    )
    package = SimpleNamespace(group="g", version=3, model_data_prefix="merged/g/loraops-m-1/")
    deployer._model_like(served, package)  # the model a merged approval deploys
    ((operation, request),) = recorder.calls
    assert operation == "CreateModel" and allows(statement["Condition"], model_context(request))
    assert not allows(statement["Condition"], model_context(_without(request, "VpcConfig")))
    assert not allows(statement["Condition"], model_context({**request, "EnableNetworkIsolation": False}))
    configs = _statement(templates[(env, "registration")], "CreateGuardedEndpointConfigs", "DeployOnApprovalPolicy")
    (endpoint_config,) = templates[(env, "serving")].find_resources("AWS::SageMaker::EndpointConfig").values()
    variant_types = [v["InstanceType"] for v in endpoint_config["Properties"]["ProductionVariants"]]
    assert allows(configs["Condition"], {"sagemaker:InstanceTypes": variant_types})
    assert not allows(configs["Condition"], {"sagemaker:InstanceTypes": ["ml.p5.48xlarge"]})
    assert not allows(configs["Condition"], {})


def test_the_evaluator_knows_its_operators():
    conditions = {"Null": {"k": "false"}, "ForAllValues:StringEquals": {"k": ["a", "b"]}, "Bool": {"b": "true"}}
    assert allows(conditions, {"k": ["a"], "b": ["true"]})
    assert not allows(conditions, {"b": ["true"]})
    assert not allows(conditions, {"k": ["c"], "b": ["true"]})
    assert not allows(conditions, {"k": ["a"]})
    assert allows({"ForAllValues:StringEquals": {"k": ["a"]}}, {})  # the hole the Null guard closes


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_studio_apps_run_only_on_the_environments_studio_instance_types(env, templates, synthesized):
    config = synthesized[env].config
    statement = _statement(templates[(env, "studio")], "CreateStudioApps", "ExecutionPolicy")
    assert sorted(statement["Action"]) == ["sagemaker:CreateApp", "sagemaker:CreateSpace"]
    assert allows(statement["Condition"], {"sagemaker:InstanceTypes": ["ml.t3.medium"]})
    assert allows(statement["Condition"], {})  # no instance type named: the domain's default
    assert not allows(statement["Condition"], {"sagemaker:InstanceTypes": ["ml.p5.48xlarge"]})
    work = _statement(templates[(env, "studio")], "SageMakerLoraopsWork", "ExecutionPolicy")
    creates = [a for a in work["Action"] if a.startswith("sagemaker:Create")]
    assert "sagemaker:CreateApp" not in creates and "sagemaker:CreateTrainingJob" not in creates
    assert config.studio_instance_types
