"""One synthesized app (all environments from cdk.json) shared by the infra tests: jsii starts once."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template

from infra import deploy
from infra.app_factory import build_app
from infra.environment import EnvironmentStacks
from infra.rehearsal import StackArtifact
from infra.rehearsal.emulator import Emulator, emulator_client
from loraops.naming import adapter_group_name, merged_group_name
from tests.helpers import ROOT


@pytest.fixture(scope="session")
def cdk_context() -> dict:
    return json.loads((ROOT / "cdk.json").read_text())["context"]


@pytest.fixture
def context_copy(cdk_context) -> dict:
    return copy.deepcopy(cdk_context)


@pytest.fixture(scope="session")
def synthesized(cdk_context, tmp_path_factory) -> dict[str, EnvironmentStacks]:
    """Every environment, synthesized once with the nag gate (synth raises on any finding)."""
    app, environments = build_app(context=cdk_context, outdir=str(tmp_path_factory.mktemp("cdk.out")))
    app.synth()
    return {env.config.name: env for env in environments}


@pytest.fixture(scope="session")
def templates(synthesized) -> dict[tuple[str, str], Template]:
    """(environment, concern) -> Template."""
    result = {}
    for name, env in synthesized.items():
        for concern in CONCERNS:
            result[(name, concern)] = Template.from_stack(getattr(env, concern))
    return result


#: Every environment configured in cdk.json: adding one there adds its assertions everywhere.
ENVIRONMENTS = tuple(json.loads((ROOT / "cdk.json").read_text())["context"]["loraops:environments"])
CONCERNS = ("storage", "network", "studio", "registry", "registration", "training", "workflow", "serving")


# ------------------------------------------------- make deploy / make destroy against moto's server
#: The groups the deploy and destroy tests register and serve.
ADAPTER_GROUP = adapter_group_name("meta-llama/Llama-2-7b-hf", "instruction-following")
MERGED_GROUP = merged_group_name("meta-llama/Llama-2-7b-hf", "databricks-dolly-15k")
ACCOUNT = "123456789012"  # the emulator's account
CDK = str(deploy.CDK)


def _in_emulator_account(name: str):
    """``name``'s configuration from cdk.json, moved to the emulator's account (same region, same everything else)."""
    return deploy.load_environment(name).model_copy(update={"account": ACCOUNT})


@pytest.fixture(scope="package")
def emulator():
    """moto's server, started once for the infra tests that deploy and destroy against it (each test resets it)."""
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


# ------------------------------------------------ the deploy rehearsal's server, one account per test
REHEARSAL_ACCOUNT, REHEARSAL_REGION = "111111111111", "us-east-1"  # dev's, as in cdk.json


@pytest.fixture(scope="package")
def rehearsal_server():
    """moto's server for the rehearsal's failure and adaptation tests, started once (each test has its account)."""
    with Emulator(REHEARSAL_ACCOUNT) as emulator:
        yield emulator


_accounts = itertools.count(100000000001)


@pytest.fixture
def aws(rehearsal_server) -> Emulator:
    """The rehearsal server as an account of this test's own (moto's state is per account)."""
    return rehearsal_server.as_account(str(next(_accounts)))


def _artifact(tmp_path: Path, name: str, template: dict, dependencies: tuple[str, ...] = ()) -> StackArtifact:
    path = tmp_path / f"{name}.template.json"
    path.write_text(json.dumps(template))
    return StackArtifact(name, path, dependencies, None, REHEARSAL_ACCOUNT, REHEARSAL_REGION)
