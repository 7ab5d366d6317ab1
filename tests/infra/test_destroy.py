"""`make destroy` against moto's server: what deploy-on-approval made is removed first, then the stacks, dependents
first (the CDK CLI calls recorded: there is no account to run them against); what stops it."""

from __future__ import annotations

import datetime
import json
import types
from typing import Any

import pytest

from infra import deploy, stack_plan, teardown
from loraops import endpoints
from tests.infra.conftest import ACCOUNT, ADAPTER_GROUP, CDK, MERGED_GROUP, EmulatorSession, _in_emulator_account


class InferenceComponents:
    """moto 5.2.5 answers every inference-component call with 500 NotImplemented, so List/Describe/Delete are answered
    here - and only they; everything else goes to the emulator. botocore's ``before-call`` event fires after the
    request was validated against the real SageMaker API model, so each request is still checked. A deleted component
    reports ``Deleting`` once before it is gone, as SageMaker's asynchronous delete does."""

    def __init__(self, client: Any, log: list) -> None:
        self.endpoints: dict[str, str] = {}  # component -> endpoint
        self.deleting: set[str] = set()
        self.stuck = False  # True: a deleted component stays Deleting
        self.log = log
        for operation in ("ListInferenceComponents", "DescribeInferenceComponent", "DeleteInferenceComponent"):
            client.meta.events.register(f"before-call.sagemaker.{operation}", self._answer)

    def _answer(self, model: Any, params: dict, **_: Any) -> tuple[Any, dict]:
        request = json.loads(params["body"] or b"{}")
        name = request.get("InferenceComponentName", "")
        if model.name == "ListInferenceComponents":
            names = [c for c, e in self.endpoints.items() if e == request.get("EndpointNameEquals", e)]
            names = [c for c in names if request.get("NameContains", "") in c]
            return _ok({"InferenceComponents": [_summary(c, self.endpoints[c]) for c in names]})
        if name not in self.endpoints:
            return _http(400), {"Error": {"Code": "ValidationException", "Message": f"Could not find {name}"}}
        if model.name == "DeleteInferenceComponent":
            self.log.append(("delete", "inference component", name))
            self.deleting.add(name)
            return _ok({})
        if name in self.deleting:  # described once more while it is deleting, then gone (unless stuck)
            if not self.stuck:
                del self.endpoints[name]
            return _ok({**_summary(name, ""), "InferenceComponentStatus": "Deleting"})
        return _ok({**_summary(name, self.endpoints[name]), "InferenceComponentStatus": "InService"})


def _http(status: int) -> Any:
    return types.SimpleNamespace(status_code=status, headers={})


def _ok(body: dict) -> tuple[Any, dict]:
    return _http(200), {**body, "ResponseMetadata": {"HTTPStatusCode": 200}}


def _summary(name: str, endpoint: str) -> dict:
    now = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)
    return {
        "InferenceComponentName": name,
        "InferenceComponentArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:inference-component/{name}",
        "EndpointName": endpoint or "gone",
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/{endpoint}",
        "VariantName": endpoints.VARIANT,
        "CreationTime": now,
        "LastModifiedTime": now,
    }


def _serving_stack_with_a_model(session: EmulatorSession) -> None:
    """What CloudFormation owns: a model and an endpoint config whose generated names start like the function's."""
    container = {"Image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/serving:1"}
    role = f"arn:aws:iam::{ACCOUNT}:role/loraops-dev-sagemaker-execution"
    template = {
        "Resources": {
            "Model": {
                "Type": "AWS::SageMaker::Model",
                "Properties": {"ExecutionRoleArn": role, "PrimaryContainer": container},
            },
            "EndpointConfig": {
                "Type": "AWS::SageMaker::EndpointConfig",
                "Properties": {
                    "ProductionVariants": [
                        {
                            "VariantName": "main",
                            "ModelName": {"Fn::GetAtt": ["Model", "ModelName"]},
                            "InstanceType": "ml.m5.large",
                            "InitialInstanceCount": 1,
                            "InitialVariantWeight": 1.0,
                        }
                    ]
                },
            },
        }
    }
    session.client("cloudformation", "us-east-1").create_stack(
        StackName="loraops-dev-serving", TemplateBody=json.dumps(template)
    )


def _made_by_the_deploy_function(session: EmulatorSession, log: list) -> InferenceComponents:
    sagemaker = session.client("sagemaker", "us-east-1")
    container = {"Image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/serving:1"}
    role = f"arn:aws:iam::{ACCOUNT}:role/loraops-dev-sagemaker-execution"
    models = [
        endpoints.resource_name("loraops-dev", MERGED_GROUP, "2"),  # deploy-on-approval's (Deployer._model_like)
        "loraops-staging-meta-llama-Llama-2-7b-hf-databricks-dolly-15k-2",  # another environment's
        "notebook-loraops-dev-experiment",  # someone else's that merely contains the prefix
    ]
    for model in models:
        sagemaker.create_model(ModelName=model, PrimaryContainer=container, ExecutionRoleArn=role)
    variant = {"VariantName": "main", "ModelName": models[0], "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    rolled = endpoints.resource_name("loraops-dev", "v", MERGED_GROUP, "2")  # Deployer._roll_endpoint's config
    sagemaker.create_endpoint_config(EndpointConfigName=rolled, ProductionVariants=[variant])
    components = InferenceComponents(sagemaker, log)
    components.endpoints = {
        endpoints.base_component_name("loraops-dev"): "loraops-dev-llm",  # the serving stack's
        endpoints.component_name("loraops-dev", ADAPTER_GROUP): "loraops-dev-llm",
        endpoints.component_name("loraops-dev", MERGED_GROUP): "loraops-dev-llm",
        endpoints.component_name("loraops-staging", ADAPTER_GROUP): "loraops-staging-llm",
    }
    session.client("ssm", "us-east-1").put_parameter(
        Name="/loraops-dev/serving/model-prefix", Value="merged/g/abc/", Type="String"
    )
    return components


def _registered_package(session: EmulatorSession, log: list) -> str:
    """A version in the environment's merged group; moto 5.2.5 has no DeleteModelPackage (500 NotImplemented), so
    that one call is answered here, after botocore validated it, and recorded in ``log``."""
    sagemaker = session.client("sagemaker", "us-east-1")
    sagemaker.create_model_package_group(ModelPackageGroupName=MERGED_GROUP)
    container = {"Image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/serving:1", "ModelDataUrl": "s3://b/m.tar.gz"}
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=MERGED_GROUP,
        InferenceSpecification={
            "Containers": [container],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]

    def delete(params: dict, **_: Any) -> tuple[Any, dict]:
        log.append(("delete", "model package", json.loads(params["body"])["ModelPackageName"]))
        return _ok({})

    sagemaker.meta.events.register("before-call.sagemaker.DeleteModelPackage", delete)
    return arn


def test_a_retain_environment_keeps_its_registry_and_served_model(session):
    log: list = []
    InferenceComponents(session.client("sagemaker", "us-east-1"), log)
    _registered_package(session, log)
    ssm = session.client("ssm", "us-east-1")
    ssm.put_parameter(Name="/loraops-staging/serving/model-prefix", Value="merged/g/abc/", Type="String")
    assert teardown.remove_deployed(_in_emulator_account("staging"), session, sleep=log.append) == []
    assert log == [] and stack_plan.parameter_exists(ssm, "/loraops-staging/serving/model-prefix")


def test_destroy_first_removes_what_deploy_on_approval_made_then_destroys_the_stacks_in_reverse_order(session, capsys):
    log: list = []
    _serving_stack_with_a_model(session)
    components = _made_by_the_deploy_function(session, log)
    sagemaker = session.client("sagemaker", "us-east-1")
    for operation in ("DeleteModel", "DeleteEndpointConfig"):
        sagemaker.meta.events.register(
            f"before-call.sagemaker.{operation}",
            lambda params, model, **_: log.append(("delete", model.name, json.loads(params["body"]))),
        )
    package = _registered_package(session, log)
    owned_model = next(m["ModelName"] for m in sagemaker.list_models()["Models"] if "serving" in m["ModelName"])
    owned_config = sagemaker.list_endpoint_configs(NameContains="serving")["EndpointConfigs"][0]["EndpointConfigName"]
    assert owned_model.startswith("loraops-dev-") and owned_config.startswith("loraops-dev-")  # the trap: same prefix

    sleeps: list[float] = []
    removed = teardown.remove_deployed(_in_emulator_account("dev"), session, sleep=sleeps.append, poll_s=15)
    assert removed == [
        f"inference component {endpoints.component_name('loraops-dev', ADAPTER_GROUP)}",
        f"inference component {endpoints.component_name('loraops-dev', MERGED_GROUP)}",
        f"endpoint config {endpoints.resource_name('loraops-dev', 'v', MERGED_GROUP, '2')}",
        f"model {endpoints.resource_name('loraops-dev', MERGED_GROUP, '2')}",
        f"model package {package}",  # dev's registry goes with it: a group with versions cannot be deleted
        "SSM parameter /loraops-dev/serving/model-prefix",
    ]
    assert ("delete", "model package", package) in log
    assert sleeps == [15]  # waited for the components' asynchronous delete before going on
    assert set(components.endpoints) == {
        endpoints.base_component_name("loraops-dev"),
        endpoints.component_name("loraops-staging", ADAPTER_GROUP),
    }
    assert sorted(m["ModelName"] for m in sagemaker.list_models()["Models"]) == sorted(
        [
            owned_model,
            "loraops-staging-meta-llama-Llama-2-7b-hf-databricks-dolly-15k-2",
            "notebook-loraops-dev-experiment",
        ]
    )
    assert [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]] == [owned_config]

    # make destroy: the same clean-up (nothing left now), then one `cdk destroy` per stack, dependents first
    commands: list = []
    log.clear()
    components.endpoints[endpoints.component_name("loraops-dev", ADAPTER_GROUP)] = "loraops-dev-llm"

    def run(command):
        log.append(("cdk", command))
        return 0

    assert deploy.destroy(_in_emulator_account("dev"), session, run=run, sleep=sleeps.append) == 0
    assert sleeps == [15, 15] and log[0] == (
        "delete",
        "inference component",
        endpoints.component_name("loraops-dev", ADAPTER_GROUP),
    )
    commands = [entry[1] for entry in log if entry[0] == "cdk"]
    assert log[-len(commands) :] == [("cdk", c) for c in commands]  # every removal before the first cdk destroy
    reverse = ["serving", "workflow", "training", "registration", "registry", "studio", "storage", "network"]
    assert commands == [
        [CDK, "--no-notices", "-c", "env=dev", "destroy", "--exclusively", "--force", f"loraops-dev-{concern}"]
        for concern in reverse
    ]


def test_destroy_stops_at_the_first_failed_stack(session):
    InferenceComponents(session.client("sagemaker", "us-east-1"), [])  # none on the endpoint
    commands: list = []

    def run(command):
        commands.append(command)
        return 1 if command[-1] == "loraops-dev-workflow" else 0

    assert deploy.destroy(_in_emulator_account("dev"), session, run=run) == 1
    assert [c[-1] for c in commands] == ["loraops-dev-serving", "loraops-dev-workflow"]


def test_a_termination_protected_environment_is_not_destroyed(session, capsys):
    commands: list = []
    assert deploy.destroy(_in_emulator_account("prod"), session, run=commands.append) == 2
    assert commands == [] and session.clients == {}  # not one AWS call
    assert "make destroy: prod has termination_protection in cdk.json" in capsys.readouterr().err


def test_a_component_that_never_finishes_deleting_stops_destroy_before_any_stack(session):
    components = InferenceComponents(session.client("sagemaker", "us-east-1"), [])
    stuck = endpoints.component_name("loraops-dev", ADAPTER_GROUP)
    components.endpoints, components.stuck = {stuck: "loraops-dev-llm"}, True
    sleeps: list[float] = []
    with pytest.raises(TimeoutError, match=f"inference components still deleting after 60 s: {stuck}"):
        teardown.remove_deployed(_in_emulator_account("dev"), session, sleep=sleeps.append, wait_s=60, poll_s=15)
    assert sleeps == [15, 15, 15, 15]
