"""`make deploy` / `make destroy`: every missing prerequisite on one line and nothing deployed; the stacks' plan
(serving skipped until its model exists), the bootstrap check and the clean-up before destroy against moto's server;
the CDK CLI calls recorded (there is no account to run them against)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import types
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from infra import deploy, preflight, stack_plan, teardown
from infra.rehearsal.emulator import emulator_client
from loraops import endpoints
from loraops.naming import adapter_group_name, merged_group_name
from tests.helpers import ROOT

ADAPTER_GROUP = adapter_group_name("meta-llama/Llama-2-7b-hf", "instruction-following")
MERGED_GROUP = merged_group_name("meta-llama/Llama-2-7b-hf", "databricks-dolly-15k")


def _run(tmp_path, path_dirs: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PATH=os.pathsep.join(path_dirs),
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return subprocess.run(
        [sys.executable, "-m", "infra.deploy", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_no_docker_and_no_credentials_are_both_reported(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _run(tmp_path, [str(empty)], "--env", "dev", "--require-approval", "never")  # CDK_ARGS pass through
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("make deploy: Docker is not installed: cdk deploy builds the trainer image")
    assert (
        lines[1] == "make deploy: no AWS credentials: set AWS_PROFILE (or run `aws configure sso`) for account "
        "111111111111"
    )


def test_a_stopped_docker_engine_is_reported(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2\nexit 1\n"
    )
    (fake / "docker").chmod(0o755)
    result = _run(tmp_path, [str(fake)], "--env", "dev")
    assert result.returncode == 1
    assert (
        "make deploy: Docker is installed but its engine is not reachable (docker info: Cannot connect to the "
        "Docker daemon at unix:///var/run/docker.sock); start it"
    ) in result.stderr


def test_unknown_environment(tmp_path):
    result = _run(tmp_path, [str(tmp_path)], "--env", "qa")
    assert result.returncode == 2
    assert "make deploy: ENV=qa: unknown environment (configured: dev, prod, staging)" in result.stderr


class _StubbedSession:
    """A boto3 session whose clients are real but stubbed: botocore's Stubber checks every request against the
    real API model. (No local STS stand-in is installed with the CDK requirements; moto arrives with the registry.)"""

    def __init__(self, responses: dict[str, list[tuple[str, dict, dict]]]) -> None:
        self.responses = responses

    def client(self, service: str, region_name: str):
        client = boto3.client(service, region_name=region_name, aws_access_key_id="x", aws_secret_access_key="x")
        stubber = Stubber(client)
        for operation, response, expected in self.responses[service]:
            stubber.add_response(operation, response, expected)
        stubber.activate()
        return client


def test_credentials_for_another_account_are_refused():
    config = deploy.load_environment("prod")
    identity = {"Account": "999999999999", "Arn": "arn:aws:iam::999999999999:user/someone", "UserId": "AIDA"}
    problems = preflight.credential_problems(config, _StubbedSession({"sts": [("get_caller_identity", identity, {})]}))
    assert problems == [
        "the AWS credentials are for account 999999999999 (arn:aws:iam::999999999999:user/someone), "
        "but cdk.json deploys prod to account 333333333333"
    ]


def test_registry_login_targets_the_regions_dlc_account(monkeypatch):
    """The token is asked of the DLC account of the region, and docker login receives it on stdin."""
    config = deploy.load_environment("prod")  # us-west-2
    token = {"authorizationData": [{"authorizationToken": "QVdTOnNlY3JldA==", "proxyEndpoint": "https://x"}]}
    calls = []
    monkeypatch.setattr(preflight.subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    session = _StubbedSession({"ecr": [("get_authorization_token", token, {"registryIds": ["763104351884"]})]})
    assert preflight.registry_login(config, session) == "763104351884.dkr.ecr.us-west-2.amazonaws.com"
    ((command, kwargs),) = calls
    assert command == [
        "docker",
        "login",
        "--username",
        "AWS",
        "--password-stdin",
        "763104351884.dkr.ecr.us-west-2.amazonaws.com",
    ]
    assert kwargs["input"] == "secret"


# ------------------------------------------------------------------------ against the local AWS emulator (moto)
ACCOUNT = "123456789012"  # the emulator's account
CDK = str(deploy.CDK)


def _in_emulator_account(name: str):
    """``name``'s configuration from cdk.json, moved to the emulator's account (same region, same everything else)."""
    return deploy.load_environment(name).model_copy(update={"account": ACCOUNT})


@pytest.fixture(scope="module")
def emulator():
    from demo.local_aws import LocalAWS

    with LocalAWS() as aws:
        yield aws


class EmulatorSession:
    """A boto3-Session-like factory of clients of the emulator (one client per service, so tests can hook them)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: dict[str, Any] = {}

    def client(self, service: str, region_name: str) -> Any:
        if service not in self.clients:
            self.clients[service] = emulator_client(service, self.url, region_name, "test")
        return self.clients[service]


@pytest.fixture
def session(emulator) -> EmulatorSession:
    emulator.reset()
    return EmulatorSession(emulator.url)


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


def _bootstrap(session: EmulatorSession, with_parameter: bool = True) -> None:
    """A CDKToolkit stack as `cdk bootstrap` leaves one: it owns the version parameter."""
    resources: dict[str, Any] = {"StagingBucket": {"Type": "AWS::S3::Bucket"}}
    if with_parameter:
        resources["CdkBootstrapVersion"] = {
            "Type": "AWS::SSM::Parameter",
            "Properties": {"Type": "String", "Name": preflight.BOOTSTRAP_VERSION_PARAMETER, "Value": "30"},
        }
    session.client("cloudformation", "us-east-1").create_stack(
        StackName="CDKToolkit", TemplateBody=json.dumps({"Resources": resources})
    )


def test_an_account_without_the_cdk_bootstrap_is_named_with_the_command_that_fixes_it(session):
    config = _in_emulator_account("dev")
    fix = f"run `node_modules/.bin/cdk bootstrap aws://{ACCOUNT}/us-east-1` once"
    assert preflight.bootstrap_problems(config, session) == [
        f"aws://{ACCOUNT}/us-east-1 is not bootstrapped for the CDK (no CDKToolkit stack): {fix}"
    ]
    _bootstrap(session, with_parameter=False)
    assert preflight.bootstrap_problems(config, session) == [
        f"aws://{ACCOUNT}/us-east-1 is not bootstrapped for the CDK (no SSM /cdk-bootstrap/hnb659fds/version): {fix}"
    ]


def test_a_bootstrapped_account_passes(session):
    _bootstrap(session)
    assert preflight.bootstrap_problems(_in_emulator_account("dev"), session) == []


def test_the_serving_stack_waits_for_its_model_parameter(session):
    config = _in_emulator_account("dev")
    ssm = session.client("ssm", "us-east-1")
    others = [f"loraops-dev-{c}" for c in ("network", "storage", "studio", "registry", "registration", "training")]
    plan = stack_plan.stack_plan(config, ssm)
    assert plan.deploy == [*others, "loraops-dev-workflow"]
    assert plan.skipped == {
        "loraops-dev-serving": "loraops-dev-serving skipped: no served model yet "
        "(SSM /loraops-dev/serving/model-prefix); import and approve a base, `loraops serve pin` it, "
        "then run make deploy ENV=dev again"
    }
    ssm.put_parameter(Name="/loraops-dev/serving/model-prefix", Value="base/g/abc/", Type="String")
    plan = stack_plan.stack_plan(config, ssm)
    assert plan.deploy == [*others, "loraops-dev-workflow", "loraops-dev-serving"] and plan.skipped == {}


@pytest.fixture
def without_docker(monkeypatch):
    """No Docker engine on this machine: the Docker checks and the registry login (tested above) are replaced."""
    monkeypatch.setattr(deploy, "docker_problems", lambda: [])
    monkeypatch.setattr(deploy, "registry_login", lambda config, session: "dlc-registry")


def test_make_deploy_runs_one_cdk_deploy_of_the_planned_stacks(session, without_docker, capsys):
    config, commands = _in_emulator_account("dev"), []

    def run(command):
        commands.append(command)
        return 0

    assert deploy.deploy(config, session, ["--require-approval", "never"], run=run) == 1  # not bootstrapped
    assert commands == [] and "is not bootstrapped for the CDK" in capsys.readouterr().err
    _bootstrap(session)
    assert deploy.deploy(config, session, ["--require-approval", "never"], run=run) == 0
    stacks = [f"loraops-dev-{c}" for c in deploy.DEPLOY_ORDER]
    assert commands == [[CDK, "--no-notices", "-c", "env=dev", "deploy", *stacks[:-1], "--require-approval", "never"]]
    assert "make deploy: loraops-dev-serving skipped: no served model yet" in capsys.readouterr().out
    session.client("ssm", "us-east-1").put_parameter(
        Name="/loraops-dev/serving/model-prefix", Value="base/g/abc/", Type="String"
    )
    assert deploy.deploy(config, session, run=run) == 0
    assert commands[-1] == [CDK, "--no-notices", "-c", "env=dev", "deploy", *stacks]


def test_retain_environments_adopt_what_their_destroyed_stacks_left():
    staging, dev = deploy.load_environment("staging"), deploy.load_environment("dev")
    plan = deploy.StackPlan(["loraops-staging-storage"])
    assert deploy.deploy_command(staging, plan)[4:6] == ["deploy", "--import-existing-resources"]
    assert "--import-existing-resources" not in deploy.deploy_command(dev, deploy.StackPlan(["loraops-dev-storage"]))


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


def test_package_groups_a_destroyed_retain_registry_left_are_named_before_deploying(session):
    staging = _in_emulator_account("staging")
    sagemaker = session.client("sagemaker", "us-east-1")
    assert preflight.orphan_problems(staging, session) == []  # a clean account
    sagemaker.create_model_package_group(ModelPackageGroupName=MERGED_GROUP)  # kept by a destroyed stack
    (problem,) = preflight.orphan_problems(staging, session)
    assert problem.startswith(
        f"model package group {MERGED_GROUP} outlived a destroyed loraops-staging-registry stack (removal_policy "
        "retain) and CloudFormation cannot adopt it automatically"
    )
    assert preflight.orphan_problems(_in_emulator_account("dev"), session) == []  # dev's are destroyed with it
    template = {"Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}}}
    session.client("cloudformation", "us-east-1").create_stack(
        StackName="loraops-staging-registry", TemplateBody=json.dumps(template)
    )
    assert preflight.orphan_problems(staging, session) == []  # the stack exists: it owns its groups


def test_a_component_that_never_finishes_deleting_stops_destroy_before_any_stack(session):
    components = InferenceComponents(session.client("sagemaker", "us-east-1"), [])
    stuck = endpoints.component_name("loraops-dev", ADAPTER_GROUP)
    components.endpoints, components.stuck = {stuck: "loraops-dev-llm"}, True
    sleeps: list[float] = []
    with pytest.raises(TimeoutError, match=f"inference components still deleting after 60 s: {stuck}"):
        teardown.remove_deployed(_in_emulator_account("dev"), session, sleep=sleeps.append, wait_s=60, poll_s=15)
    assert sleeps == [15, 15, 15, 15]
