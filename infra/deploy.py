"""``make deploy ENV=<env>`` and ``make destroy ENV=<env>``: check what a deploy needs, log in to the image
registries it pulls from, deploy the stacks in dependency order; tear down in reverse.

``cdk deploy`` builds the trainer image locally (a Docker engine is needed) ``FROM`` the AWS Deep Learning
Containers registry of the environment's region, and the CDK CLI logs in only to the bootstrap repository it pushes
to. So, before the CLI runs: Docker present and running, AWS credentials present and for the configured account, the
account/region bootstrapped for the CDK, then ``docker login`` to the DLC registry of the region. Every problem is
reported, each on one line.

The serving stack reads its model's S3 prefix from the SSM parameter ``loraops serve pin`` writes; on a clean
account it cannot exist yet (a base is imported and approved with the other stacks in place), so :func:`stack_plan`
leaves the serving stack out, with a one-line reason, until it does. ``make destroy`` first removes what the
deploy-on-approval function created outside CloudFormation (:func:`remove_deployed`), then destroys the stacks one
by one in reverse dependency order.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.config import CONTEXT_KEY, ConfigError, load_environments
from infra.environment_config import EnvironmentConfig
from loraops import endpoints
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


#: The concerns of an environment in deployment order: each after every stack it depends on (the explicit
#: dependencies of :class:`infra.environment.EnvironmentStacks`; a test checks this order against them).
DEPLOY_ORDER = ("network", "storage", "studio", "registry", "registration", "training", "workflow", "serving")
#: Where ``cdk bootstrap`` (default qualifier) records its template version.
BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
BOOTSTRAP_STACK = "CDKToolkit"


@dataclass(frozen=True)
class StackPlan:
    """What ``make deploy`` deploys: stack names in dependency order, and the stacks left out with their reason."""

    deploy: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def parameter_exists(ssm: Any, name: str) -> bool:
    try:
        ssm.get_parameter(Name=name)
    except ssm.exceptions.ParameterNotFound:
        return False
    return True


def stack_plan(config: EnvironmentConfig, ssm: Any) -> StackPlan:
    """The environment's stacks in deployment order (``ssm``: an SSM client of the environment's account and
    region). The serving stack is left out while its model parameter (``loraops serve pin``) does not exist: its
    template reads that parameter, and CloudFormation fails a stack whose SSM parameter is missing."""
    names = [f"{config.prefix}-{concern}" for concern in DEPLOY_ORDER if concern != "serving" or config.serving]
    skipped = {}
    serving = f"{config.prefix}-serving"
    parameter = endpoints.served_model_parameter(config.prefix)
    if config.serving and not parameter_exists(ssm, parameter):
        names.remove(serving)
        skipped[serving] = (
            f"{serving} skipped: no served model yet (SSM {parameter}); import and approve a base, "
            f"`loraops serve pin` it, then run make deploy ENV={config.name} again"
        )
    return StackPlan(names, skipped)


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


def package_groups(config: EnvironmentConfig) -> list[str]:
    """The model package groups the registry stack creates."""
    return [config.base_group, *(line.group_name(config.base_model_id) for line in config.fine_tuned_lines)]


def orphan_problems(config: EnvironmentConfig, session: Any) -> list[str]:
    """Retained package groups a destroyed registry stack left behind. The other retained named resources (bucket,
    table, log groups, collections) are adopted by :func:`deploy_command`'s auto-import; a package group cannot be
    (CloudFormation's auto-import needs the primary identifier in the template, and a group's is its read-only ARN),
    and creating it again fails, so each is named before anything is deployed."""
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
    for group in package_groups(config):
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


def cdk_base(config: EnvironmentConfig) -> list[str]:
    return [str(CDK), "--no-notices", "-c", f"env={config.name}"]


def deploy_command(config: EnvironmentConfig, plan: StackPlan, cdk_args: Sequence[str] = ()) -> list[str]:
    """One ``cdk deploy`` of the planned stacks. ``--import-existing-resources`` adopts the named resources a
    ``retain`` environment left behind when its stacks were destroyed (bucket, idempotency table, function log
    groups, collections: ``RetainExceptOnCreate`` with static names, which CloudFormation's auto-import requires), so
    a redeploy does not collide with them; package groups are checked first instead (:func:`orphan_problems`)."""
    adopt = ["--import-existing-resources"] if config.removal_policy == "retain" else []
    return [*cdk_base(config), "deploy", *adopt, *plan.deploy, *cdk_args]


def destroy_commands(config: EnvironmentConfig, cdk_args: Sequence[str] = ()) -> list[list[str]]:
    """One ``cdk destroy --exclusively`` per stack, in reverse deployment order."""
    stacks = [
        f"{config.prefix}-{concern}" for concern in reversed(DEPLOY_ORDER) if concern != "serving" or config.serving
    ]
    return [[*cdk_base(config), "destroy", "--exclusively", "--force", stack, *cdk_args] for stack in stacks]


def _cloudformation_owned(cloudformation: Any, prefix: str) -> set[str]:
    """Names of every resource in the environment's CloudFormation stacks (a SageMaker resource's physical id is its
    ARN, ``arn:...:model/<name>``: the name is what follows the last slash)."""
    owned: set[str] = set()
    for concern in DEPLOY_ORDER:
        try:
            pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=f"{prefix}-{concern}")
            ids = [r.get("PhysicalResourceId", "") for page in pages for r in page["StackResourceSummaries"]]
            owned |= {i.rsplit("/", 1)[-1] if i.startswith("arn:") else i for i in ids}
        except cloudformation.exceptions.ClientError as error:
            if "does not exist" not in str(error):
                raise
    return owned


def _names(sagemaker: Any, operation: str, key: str, item: str, prefix: str, **kwargs: Any) -> list[str]:
    pages = sagemaker.get_paginator(operation).paginate(NameContains=prefix, **kwargs)
    return [entry[item] for page in pages for entry in page[key] if entry[item].startswith(f"{prefix}-")]


def remove_deployed(
    config: EnvironmentConfig,
    session: Any,
    sleep: Callable[[float], None] = time.sleep,
    wait_s: float = 1800,
    poll_s: float = 15,
) -> list[str]:
    """Delete what deploy-on-approval (and ``loraops serve pin``) made outside CloudFormation; returns what went.

    Found by the names :mod:`loraops.endpoints` gives them, and never one a stack of the environment owns:
    the inference components on the environment's endpoint other than the base component (waited for until gone:
    CloudFormation cannot delete the base component or the endpoint under them), the models and endpoint configs
    named ``loraops-<env>-...``, and, where the environment's data is destroyed with it (``removal_policy``
    ``destroy``), the versions in its package groups and the served-model parameter.
    """
    region = config.region
    sagemaker = session.client("sagemaker", region_name=region)
    owned = _cloudformation_owned(session.client("cloudformation", region_name=region), config.prefix)
    endpoint = endpoints.endpoint_name(config.prefix)
    removed = []
    components = [
        name
        for name in _names(
            sagemaker,
            "list_inference_components",
            "InferenceComponents",
            "InferenceComponentName",
            config.prefix,
            EndpointNameEquals=endpoint,
        )
        if name != endpoints.base_component_name(config.prefix) and name not in owned
    ]
    for name in components:
        sagemaker.delete_inference_component(InferenceComponentName=name)
        removed.append(f"inference component {name}")
    waited = 0.0
    while components:
        components = [name for name in components if _component_exists(sagemaker, name)]
        if components and waited >= wait_s:
            raise TimeoutError(f"inference components still deleting after {wait_s:.0f} s: {', '.join(components)}")
        if components:
            sleep(poll_s)
            waited += poll_s
    for name in _names(sagemaker, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", config.prefix):
        if name not in owned:
            sagemaker.delete_endpoint_config(EndpointConfigName=name)
            removed.append(f"endpoint config {name}")
    for name in _names(sagemaker, "list_models", "Models", "ModelName", config.prefix):
        if name not in owned:
            sagemaker.delete_model(ModelName=name)
            removed.append(f"model {name}")
    if config.removal_policy == "destroy":
        removed += _remove_packages(sagemaker, package_groups(config))
        ssm = session.client("ssm", region_name=region)
        parameter = endpoints.served_model_parameter(config.prefix)
        try:
            ssm.delete_parameter(Name=parameter)
            removed.append(f"SSM parameter {parameter}")
        except ssm.exceptions.ParameterNotFound:
            pass
    return removed


def _remove_packages(sagemaker: Any, groups: list[str]) -> list[str]:
    """Every version in ``groups`` (registered by the functions and the CLI, outside CloudFormation): a package group
    with versions in it cannot be deleted, so the registry stack's own delete would fail on them."""
    removed = []
    for group in groups:
        try:
            pages = sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group)
            arns = [p["ModelPackageArn"] for page in pages for p in page["ModelPackageSummaryList"]]
        except sagemaker.exceptions.ClientError as error:
            if error.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
                raise
            continue  # no such group (yet)
        for arn in arns:
            sagemaker.delete_model_package(ModelPackageName=arn)
            removed.append(f"model package {arn}")
    return removed


def _component_exists(sagemaker: Any, name: str) -> bool:
    try:
        sagemaker.describe_inference_component(InferenceComponentName=name)
    except sagemaker.exceptions.ClientError as error:
        if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return False
        raise
    return True


Runner = Callable[[list[str]], int]


def _run_cdk(command: list[str]) -> int:
    return subprocess.run(command, cwd=ROOT, env=dict(os.environ)).returncode


def deploy(config: EnvironmentConfig, session: Any, cdk_args: Sequence[str] = (), run: Runner = _run_cdk) -> int:
    """Preflight, registry login, then one ``cdk deploy`` of :func:`stack_plan`'s stacks."""
    problems = docker_problems() + credential_problems(config, session)
    if not problems:
        problems = bootstrap_problems(config, session) or orphan_problems(config, session)
    if problems:
        for problem in problems:
            print(f"make deploy: {problem}", file=sys.stderr)
        return 1
    print(f"logged in to {registry_login(config, session)} (the trainer image's base)")
    plan = stack_plan(config, session.client("ssm", region_name=config.region))
    for reason in plan.skipped.values():
        print(f"make deploy: {reason}")
    return run(deploy_command(config, plan, cdk_args))


def destroy(
    config: EnvironmentConfig,
    session: Any,
    cdk_args: Sequence[str] = (),
    run: Runner = _run_cdk,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Remove what the deploy function created, then destroy the stacks in reverse dependency order."""
    if config.termination_protection:
        print(
            f"make destroy: {config.name} has termination_protection in cdk.json; turn it off and deploy first",
            file=sys.stderr,
        )
        return 2
    problems = credential_problems(config, session)
    if problems:
        for problem in problems:
            print(f"make destroy: {problem}", file=sys.stderr)
        return 1
    for what in remove_deployed(config, session, sleep=sleep):
        print(f"make destroy: deleted {what} (made by deploy-on-approval, outside CloudFormation)")
    for command in destroy_commands(config, cdk_args):
        code = run(command)
        if code != 0:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="environment name from cdk.json")
    parser.add_argument("--destroy", action="store_true", help="tear the environment down (make destroy)")
    parser.add_argument("cdk_args", nargs="*", help="passed to `cdk deploy` (e.g. --require-approval never)")
    args, unknown = parser.parse_known_args(argv)  # CDK_ARGS' flags (--require-approval never) go to the CLI
    args.cdk_args = [*args.cdk_args, *unknown]
    verb = "make destroy" if args.destroy else "make deploy"
    try:
        config = load_environment(args.env)
    except ConfigError as error:
        print(f"{verb}: {error}", file=sys.stderr)
        return 2
    import boto3

    session = boto3.Session()
    return (destroy if args.destroy else deploy)(config, session, args.cdk_args)


if __name__ == "__main__":
    sys.exit(main())
