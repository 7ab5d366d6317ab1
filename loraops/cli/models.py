"""``loraops models tree | approve | reject``."""

from __future__ import annotations

import argparse
import os

from loraops.cli.common import add_registry_options, emit, open_registry, registry_errors, size


def add_commands(nouns) -> None:
    models = nouns.add_parser("models", help="the registry's models").add_subparsers(
        dest="verb", metavar="{tree,approve,reject}"
    )
    tree = models.add_parser("tree", help="base -> collections -> groups -> versions")
    add_registry_options(tree)
    tree.set_defaults(run=show_tree)
    for verb, approve in (("approve", True), ("reject", False)):
        decide = models.add_parser(verb, help=f"{verb} one model package version")
        decide.add_argument("package_arn")
        decide.add_argument("--reason", default="")
        decide.add_argument(
            "--approver-role",
            default=os.environ.get("LORAOPS_APPROVER_ROLE"),
            help="assume the environment's approver role first ($LORAOPS_APPROVER_ROLE)",
        )
        add_registry_options(decide)
        decide.set_defaults(run=lambda args, approve=approve: decide_package(args, approve))


def render_tree(bases):
    from rich.tree import Tree

    root = Tree("registry")
    for base in bases:
        node = root.add(f"[bold]{base['base']}[/]  collections: {', '.join(base['collections'])}")
        for group in base["groups"]:
            branch = node.add(
                f"{group['group']}  [dim]{group['type']} {group['mode']} approval={group['approval_policy']}[/]"
            )
            for v in group["versions"]:
                loss = f"{float(v['eval_loss']):.4f}" if v["eval_loss"] else "-"
                branch.add(
                    f"v{v['version']} {v['status']}  dataset={v['dataset'] or '-'}  eval_loss={loss}  "
                    f"{size(v['bytes'])}"
                )
    return root


@registry_errors
def show_tree(args: argparse.Namespace) -> int:
    emit(args, open_registry(args).tree(), render_tree)
    return 0


@registry_errors
def decide_package(args: argparse.Namespace, approve: bool) -> int:
    package = open_registry(args, role_arn=args.approver_role).decide(args.package_arn, approve, args.reason)
    emit(args, package.__dict__, lambda p: f"{p['arn']}  {p['status']}")
    return 0
