"""``loraops models tree | describe | approve | reject | promote`` (promote: :mod:`loraops.cli.promote`)."""

from __future__ import annotations

import argparse
import os

from loraops.cli import promote
from loraops.cli.common import add_registry_options, emit, open_registry, package_json, registry_errors, size


def add_commands(nouns) -> None:
    models = nouns.add_parser("models", help="the registry's models").add_subparsers(
        dest="verb", metavar="{tree,describe,approve,reject,promote}", help="what to do"
    )
    tree = models.add_parser("tree", help="base -> collections -> groups -> versions (this environment's only)")
    add_registry_options(tree)
    tree.set_defaults(run=show_tree)
    describe = models.add_parser("describe", help="one package version: status, prefix, lineage, digests")
    describe.add_argument("package_arn", help="the model package version's ARN")
    add_registry_options(describe)
    describe.set_defaults(run=describe_package)
    for verb, approve in (("approve", True), ("reject", False)):
        decide = models.add_parser(verb, help=f"{verb} one model package version of this environment")
        decide.add_argument("package_arn", help="the model package version's ARN")
        decide.add_argument("--reason", default="", help="recorded as the approval description")
        decide.add_argument(
            "--approver-role",
            default=os.environ.get("LORAOPS_APPROVER_ROLE"),
            help="assume the environment's approver role first ($LORAOPS_APPROVER_ROLE)",
        )
        add_registry_options(decide)
        decide.set_defaults(run=lambda args, approve=approve: decide_package(args, approve))
    promote.add_command(models)


def render_tree(data):
    from rich.tree import Tree

    root = Tree("registry")
    for base in data["bases"]:
        node = root.add(f"[bold]{base['base']}[/]  collections: {', '.join(base['collections'])}")
        for group in base["groups"]:
            branch = node.add(
                f"{group['group']}  [dim]{group['type'] or '-'} {group['mode'] or '-'} "
                f"approval={group['approval_policy'] or '-'}[/]"
            )
            for v in group["versions"]:
                loss = f"{v['eval_loss']:.4f}" if v["eval_loss"] is not None else "-"
                branch.add(
                    f"v{v['version']} {v['status']}  dataset={v['dataset'] or '-'}  eval_loss={loss}  "
                    f"{size(v['bytes'])}"
                )
    return root


def render_package(p) -> str:
    lines = [f"{p['arn']}", f"  version {p['version']}  {p['status']}", f"  serves {p['model_data_uri'] or '-'}"]
    lines += [f"  {k}: {v}" for k, v in sorted(p["metadata"].items())]
    return "\n".join(lines)


@registry_errors
def show_tree(args: argparse.Namespace) -> int:
    emit(args, {"bases": open_registry(args).tree()}, render_tree)
    return 0


@registry_errors
def describe_package(args: argparse.Namespace) -> int:
    emit(args, package_json(open_registry(args).describe(args.package_arn)), render_package)
    return 0


@registry_errors
def decide_package(args: argparse.Namespace, approve: bool) -> int:
    package = open_registry(args, role_arn=args.approver_role).decide(args.package_arn, approve, args.reason)
    emit(args, package_json(package), lambda p: f"{p['arn']}  {p['status']}")
    return 0
