"""``loraops base import | register``: put a base model under ``base/`` uncompressed and register it."""

from __future__ import annotations

import argparse
import os

from loraops.cli.common import add_registry_options, emit, open_registry, registry_errors


def add_commands(nouns) -> None:
    base = nouns.add_parser("base", help="base models").add_subparsers(dest="verb", metavar="{import,register}")
    imp = base.add_parser(
        "import", help="copy a base model under base/ uncompressed (from a folder, S3 or the Hub) and register it"
    )
    imp.add_argument("source", help="./folder | s3://bucket/prefix/ | hf://<org>/<model>")
    imp.add_argument("--model-id", required=True, help="Hugging Face id, e.g. meta-llama/Llama-2-7b-hf")
    imp.add_argument("--revision", default="main", help="Hub revision (branch, tag or commit)")
    imp.add_argument(
        "--licence", default="", help="licence accepted for the weights (recorded in the package; required for hf://)"
    )
    imp.add_argument("--hub-token-env", default="HF_TOKEN", help="environment variable holding a Hub token")
    add_registry_options(imp)
    imp.set_defaults(run=import_base)
    reg = base.add_parser("register", help="register a base model already under base/<group>/<weights hex>/")
    reg.add_argument("--model-id", required=True)
    reg.add_argument("--weights-digest", required=True, help="sha256:<hex> (the folder's name under base/<group>/)")
    add_registry_options(reg)
    reg.set_defaults(run=register_base)


def _package(args, package) -> None:
    emit(args, package.__dict__, lambda p: f"{p['arn']}  version {p['version']}  {p['status']}")


@registry_errors
def import_base(args: argparse.Namespace) -> int:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from loraops import base_import

    registry = open_registry(args)
    token = os.environ.get(args.hub_token_env, "")
    source = base_import.source_from(args.source, registry.s3, revision=args.revision, token=token)
    columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, disable=args.json) as progress:
        task = progress.add_task(f"import {args.model_id}", total=None)
        package = base_import.import_base(
            registry,
            source,
            args.model_id,
            licence=args.licence,
            progress=lambda name, n: progress.update(task, advance=n, description=name),
        )
    _package(args, package)
    return 0


@registry_errors
def register_base(args: argparse.Namespace) -> int:
    _package(args, open_registry(args).register_base(args.model_id, args.weights_digest))
    return 0
