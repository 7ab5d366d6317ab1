"""Builds the CDK app: configuration, the stacks of each selected environment, the nag gate."""

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
    apply_gate(app)
    return app, environments
