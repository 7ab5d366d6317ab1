"""``make deploy ENV=<env>``: check what a deploy needs, log in to the image registries it pulls from, deploy.

``cdk deploy`` builds the trainer image locally (a Docker engine is needed) ``FROM`` the AWS Deep Learning
Containers registry of the environment's region, and the CDK CLI logs in only to the bootstrap repository it pushes
to. So, before the CLI runs: Docker present and running, AWS credentials present and for the configured account,
then ``docker login`` to the DLC registry of the region. Every problem is reported, each on one line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.config import CONTEXT_KEY, ConfigError, EnvironmentConfig, load_environments
from loraops.images import image_uri, registry_of

ROOT = Path(__file__).resolve().parents[1]
CDK = ROOT / "node_modules" / ".bin" / "cdk"


def docker_problems(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    if which("docker") is None:
        return [
            "Docker is not installed: cdk deploy builds the trainer image (training_container/Dockerfile) "
            "locally; install Docker Engine (or Docker Desktop) and run make deploy again"
        ]
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"Docker is installed but its engine is not reachable (docker info: {reason}); start it"]
    return []


def credential_problems(config: EnvironmentConfig, session: Any) -> list[str]:
    """The caller's account must be the environment's (``session``: a boto3 Session)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        identity = session.client("sts", region_name=config.region).get_caller_identity()
    except NoCredentialsError:
        return [f"no AWS credentials: set AWS_PROFILE (or run `aws configure sso`) for account {config.account}"]
    except (BotoCoreError, ClientError) as error:
        return [f"cannot check the AWS credentials with STS ({error})"]
    if identity["Account"] != config.account:
        return [
            f"the AWS credentials are for account {identity['Account']} ({identity['Arn']}), but cdk.json "
            f"deploys {config.name} to account {config.account}"
        ]
    return []


def registry_login(config: EnvironmentConfig, session: Any) -> str:
    """``docker login`` to the DLC registry the trainer image starts FROM; returns the registry."""
    registry = registry_of(image_uri("training", config.region))
    account = registry.split(".", 1)[0]
    ecr = session.client("ecr", region_name=config.region)
    data = ecr.get_authorization_token(registryIds=[account])["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    subprocess.run(
        ["docker", "login", "--username", user, "--password-stdin", registry],
        input=password,
        text=True,
        check=True,
        capture_output=True,
    )
    return registry


def load_environment(name: str) -> EnvironmentConfig:
    """``name``'s configuration from ``cdk.json``, through the loader synth uses (every check included)."""
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    if name not in context[CONTEXT_KEY]:
        raise ConfigError(f"ENV={name}: unknown environment (configured: {', '.join(sorted(context[CONTEXT_KEY]))})")
    return load_environments(context, selected=name)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="environment name from cdk.json")
    parser.add_argument("cdk_args", nargs="*", help="passed to `cdk deploy` (e.g. --require-approval never)")
    args = parser.parse_args(argv)
    try:
        config = load_environment(args.env)
    except ConfigError as error:
        print(f"make deploy: {error}", file=sys.stderr)
        return 2
    import boto3

    session = boto3.Session()
    problems = docker_problems() + credential_problems(config, session)
    if problems:
        for problem in problems:
            print(f"make deploy: {problem}", file=sys.stderr)
        return 1
    print(f"logged in to {registry_login(config, session)} (the trainer image's base)")
    command = [str(CDK), "deploy", "--no-notices", "-c", f"env={config.name}", f"{config.prefix}-*", *args.cdk_args]
    return subprocess.run(command, cwd=ROOT, env=dict(os.environ)).returncode


if __name__ == "__main__":
    sys.exit(main())
