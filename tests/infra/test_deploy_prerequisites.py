"""`make deploy`'s prerequisites: every missing one on one line and nothing deployed (Docker, credentials, the
environment); the credentials' account and the DLC registry login, against stubbed AWS clients."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
from botocore.stub import Stubber

from infra import deploy, preflight
from tests.helpers import ROOT


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
