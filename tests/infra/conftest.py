"""One synthesized app (all environments from cdk.json) shared by the infra tests: jsii starts once."""

from __future__ import annotations

import copy
import json

import pytest
from aws_cdk.assertions import Template

from infra.app_factory import build_app
from infra.environment import EnvironmentStacks
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
