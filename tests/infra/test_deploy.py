"""`make deploy` against moto's server: the bootstrap check, the stacks' plan (serving skipped until its model exists),
the one `cdk deploy` command (recorded: there is no account to run it against), and the package groups a destroyed
retain registry left."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra import deploy, preflight, stack_plan
from tests.infra.conftest import ACCOUNT, CDK, MERGED_GROUP, EmulatorSession, _in_emulator_account


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
