"""``make deploy``'s preflight: Docker present and running, AWS credentials for the configured account, the
account/region bootstrapped for the CDK, no retained package group a destroyed registry stack left behind; then
``docker login`` to the DLC registry the trainer image starts ``FROM``. Each problem is one line."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from infra.environment_config import EnvironmentConfig
from infra.stack_plan import parameter_exists
from loraops.images import image_uri, registry_of

#: Where ``cdk bootstrap`` (default qualifier) records its template version.
BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
BOOTSTRAP_STACK = "CDKToolkit"


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


def bootstrap_problems(config: EnvironmentConfig, session: Any) -> list[str]:
    """The environment's account and region must be bootstrapped: the CDKToolkit stack and its version parameter."""
    from botocore.exceptions import ClientError

    target = f"aws://{config.account}/{config.region}"
    fix = f"run `node_modules/.bin/cdk bootstrap {target}` once"
    try:
        session.client("cloudformation", region_name=config.region).describe_stacks(StackName=BOOTSTRAP_STACK)
    except ClientError as error:
        if "does not exist" not in str(error):
            raise
        return [f"{target} is not bootstrapped for the CDK (no {BOOTSTRAP_STACK} stack): {fix}"]
    if not parameter_exists(session.client("ssm", region_name=config.region), BOOTSTRAP_VERSION_PARAMETER):
        return [f"{target} is not bootstrapped for the CDK (no SSM {BOOTSTRAP_VERSION_PARAMETER}): {fix}"]
    return []


def orphan_problems(config: EnvironmentConfig, session: Any) -> list[str]:
    """Retained package groups a destroyed registry stack left behind. The other retained named resources (bucket,
    table, log groups, collections) are adopted by :func:`infra.deploy.deploy_command`'s auto-import; a package group
    cannot be (CloudFormation's auto-import needs the primary identifier in the template, and a group's is its
    read-only ARN), and creating it again fails, so each is named before anything is deployed."""
    if config.removal_policy != "retain":
        return []
    cloudformation = session.client("cloudformation", region_name=config.region)
    stack = f"{config.prefix}-registry"
    try:
        cloudformation.describe_stacks(StackName=stack)
        return []  # the stack owns its groups
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" not in str(error):
            raise
    sagemaker = session.client("sagemaker", region_name=config.region)
    problems = []
    for group in config.package_groups:
        try:
            sagemaker.describe_model_package_group(ModelPackageGroupName=group)
        except sagemaker.exceptions.ClientError:
            continue
        problems.append(
            f"model package group {group} outlived a destroyed {stack} stack (removal_policy retain) and "
            f"CloudFormation cannot adopt it automatically: bring it into {stack} with a resource import "
            f"(`node_modules/.bin/cdk import -c env={config.name} {stack}`) or delete it, then run make deploy again"
        )
    return problems
