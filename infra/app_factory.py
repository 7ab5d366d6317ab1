"""Builds the CDK app: configuration, the stacks of each selected environment, their order, the nag gate."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk

from infra.config import CONTEXT_KEY, ENV_SELECTOR_KEY, load_environments
from infra.environment import EnvironmentStacks
from infra.nag import apply_gate


def build_app(
    context: dict[str, Any] | None = None, outdir: str | None = None
) -> tuple[cdk.App, list[EnvironmentStacks]]:
    """Create the app; ``context`` (tests) defaults to what ``cdk.json`` and ``-c`` provide."""
    app = cdk.App(context=context, outdir=outdir)
    raw = {CONTEXT_KEY: app.node.try_get_context(CONTEXT_KEY)}
    selected = app.node.try_get_context(ENV_SELECTOR_KEY)
    environments = [EnvironmentStacks(app, config) for config in load_environments(raw, selected)]
    for environment in environments:
        add_dependencies(environment)
    apply_gate(app)
    return app, environments


def add_dependencies(env: EnvironmentStacks) -> None:
    """Dependencies (``add_stack_dependency``; ``add_dependency`` is deprecated in aws-cdk-lib 2.275) that no
    cross-stack reference makes: resources named literally in another stack.

    - studio owns the SageMaker execution role that registration (PassRole by the deploy function), workflow (every
      training job) and serving (the model, the endpoint config) name by ARN; CloudFormation validates the role
      when it creates a model, so serving on a clean account needs studio first;
    - registration's functions register into the registry's package groups and collections;
    - workflow runs the trainer image the training stack builds.
    """
    env.registration.add_stack_dependency(env.studio, "passes the execution role it names")
    env.registration.add_stack_dependency(env.registry, "registers into its package groups and collections")
    env.workflow.add_stack_dependency(env.studio, "training jobs run as the execution role it names")
    env.workflow.add_stack_dependency(env.training, "training jobs run the trainer image it builds")
    if env.serving is not None:
        env.serving.add_stack_dependency(env.studio, "the model and endpoint config run as the execution role it names")
