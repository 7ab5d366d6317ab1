"""``loraops models tree | describe | approve | reject | migrate | promote`` (promote: :mod:`loraops.cli.promote`)."""

from __future__ import annotations

import argparse
import os

from loraops.cli import promote
from loraops.cli.common import add_registry_options, emit, open_registry, package_json, registry_errors, size


def add_commands(nouns) -> None:
    models = nouns.add_parser("models", help="the registry's models").add_subparsers(
        dest="verb", metavar="{tree,describe,approve,reject,migrate,promote}", help="what to do"
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
    migrate = models.add_parser(
        "migrate",
        help="bring what an earlier loraops registered to what deployments verify: fine-tunes copied to their "
        "write-once prefix (a new version to approve), content digests of bases recorded, collection tags moved",
    )
    migrate.add_argument(
        "package_arn",
        nargs="*",
        help="package versions to migrate (default: every one of this environment that needs it)",
    )
    add_registry_options(migrate)
    migrate.set_defaults(run=migrate_packages)
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


def render_migration(data) -> str:
    lines = (
        [f"collection tags moved: {', '.join(data['collection_groups_moved'])}"]
        if data["collection_groups_moved"]
        else []
    )
    for p in data["packages"]:
        line = f"{p['package']}  {p['action']}"
        if p.get("migrated_to"):
            line += f" -> {p['migrated_to']} ({p['migrated_status']})"
        lines.append(line)
    return "\n".join(lines) or "nothing to migrate"


@registry_errors
def migrate_packages(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    if args.package_arn:
        data = {"collection_groups_moved": [], "packages": [registry.migrate(arn) for arn in args.package_arn]}
    else:
        data = registry.migrate_all()
    emit(args, data, render_migration)
    return 0
