"""The stacks of a synthesized cloud assembly (``cdk.out``), in the order a deploy creates them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AssemblyError(ValueError):
    """The assembly cannot be rehearsed as asked (unknown stack, missing dependency, cycle)."""


@dataclass(frozen=True)
class StackArtifact:
    name: str
    template_path: Path
    dependencies: tuple[str, ...]  # other stacks (asset manifests left out)
    assets_path: Path | None
    account: str
    region: str

    def template(self) -> dict[str, Any]:
        return json.loads(self.template_path.read_text())

    def assets(self) -> dict[str, Any]:
        return json.loads(self.assets_path.read_text()) if self.assets_path else {}


def read_stacks(cdk_out: Path) -> dict[str, StackArtifact]:
    """Every CloudFormation stack of ``cdk_out/manifest.json`` by name, with its stack dependencies."""
    manifest = json.loads((cdk_out / "manifest.json").read_text())
    artifacts: dict[str, Any] = manifest["artifacts"]
    stacks = {}
    for artifact_id, artifact in artifacts.items():
        if artifact["type"] != "aws:cloudformation:stack":
            continue
        properties = artifact["properties"]
        dependencies = artifact.get("dependencies", [])
        assets = [dep for dep in dependencies if artifacts.get(dep, {}).get("type") == "cdk:asset-manifest"]
        account, region = artifact["environment"].removeprefix("aws://").split("/")
        stacks[artifact_id] = StackArtifact(
            name=properties.get("stackName", artifact_id),
            template_path=cdk_out / properties["templateFile"],
            dependencies=tuple(
                dep for dep in dependencies if artifacts.get(dep, {}).get("type") == "aws:cloudformation:stack"
            ),
            assets_path=cdk_out / artifacts[assets[0]]["properties"]["file"] if assets else None,
            account=account,
            region=region,
        )
    return stacks


def deploy_order(stacks: dict[str, StackArtifact], selected: list[str] | None = None) -> list[StackArtifact]:
    """``selected`` (default: all) in dependency order, ties in manifest order; a selected stack whose dependency is
    not selected, an unknown name or a cycle raises ``AssemblyError``."""
    names = list(stacks) if selected is None else list(dict.fromkeys(selected))
    unknown = [name for name in names if name not in stacks]
    if unknown:
        raise AssemblyError(f"not in the assembly: {', '.join(unknown)} (it has: {', '.join(stacks)})")
    chosen = set(names)
    for name in names:
        missing = [dep for dep in stacks[name].dependencies if dep not in chosen]
        if missing:
            raise AssemblyError(f"{name} depends on {', '.join(missing)}, which is not among the stacks to rehearse")
    order: list[StackArtifact] = []
    placed: set[str] = set()
    while len(order) < len(names):
        ready = [name for name in names if name not in placed and set(stacks[name].dependencies) <= placed]
        if not ready:
            raise AssemblyError(f"dependency cycle among {', '.join(n for n in names if n not in placed)}")
        order.append(stacks[ready[0]])
        placed.add(ready[0])
    return order
