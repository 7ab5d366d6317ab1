"""``make deploy ENV=<env>`` and ``make destroy ENV=<env>``: check what a deploy needs, log in to the image
registries it pulls from, deploy the stacks in dependency order; tear down in reverse.

``cdk deploy`` builds the trainer image locally (a Docker engine is needed) ``FROM`` the AWS Deep Learning
Containers registry of the environment's region, and the CDK CLI logs in only to the bootstrap repository it pushes
to. So, before the CLI runs: Docker present and running, AWS credentials present and for the configured account, the
account/region bootstrapped for the CDK, then ``docker login`` to the DLC registry of the region
(``infra.preflight``). Every problem is reported, each on one line.

The serving stack reads its model's S3 prefix from the SSM parameter ``loraops serve pin`` writes; on a clean
account it cannot exist yet (a base is imported and approved with the other stacks in place), so
:func:`infra.stack_plan.stack_plan` leaves the serving stack out, with a one-line reason, until it does.
``make destroy`` first removes what the deploy-on-approval function created outside CloudFormation
(:func:`infra.teardown.remove_deployed`), then destroys the stacks one by one in reverse dependency order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infra.config import CONTEXT_KEY, ConfigError, load_environments
from infra.environment_config import EnvironmentConfig
from infra.preflight import (
    bootstrap_problems,
    credential_problems,
    docker_problems,
    orphan_problems,
    registry_login,
)
from infra.stack_plan import DEPLOY_ORDER, StackPlan, stack_plan
from infra.teardown import remove_deployed

ROOT = Path(__file__).resolve().parents[1]
CDK = ROOT / "node_modules" / ".bin" / "cdk"


def load_environment(name: str) -> EnvironmentConfig:
    """``name``'s configuration from ``cdk.json``, through the loader synth uses (every check included)."""
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    if name not in context[CONTEXT_KEY]:
        raise ConfigError(f"ENV={name}: unknown environment (configured: {', '.join(sorted(context[CONTEXT_KEY]))})")
    return load_environments(context, selected=name)[0]


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
