"""``loraops base import | register``: put a base model under ``base/`` uncompressed and register it."""

from __future__ import annotations

import argparse
import os
import sys

from loraops.cli.common import (
    UsageError,
    add_registry_options,
    console,
    emit,
    open_registry,
    package_json,
    registry_errors,
)


def add_commands(nouns) -> None:
    base = nouns.add_parser("base", help="base models").add_subparsers(
        dest="verb", metavar="{import,register}", help="what to do"
    )
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
    reg = base.add_parser("register", help="register a base model already under base/<group>/<content hex>/")
    reg.add_argument("--model-id", required=True, help="Hugging Face id, e.g. meta-llama/Llama-2-7b-hf")
    reg.add_argument(
        "--digest",
        required=True,
        help="sha256:<hex>, the content digest that names the folder under base/<group>/",
    )
    add_registry_options(reg)
    reg.set_defaults(run=register_base)


def _package(args, package) -> None:
    emit(args, package_json(package), lambda p: f"{p['arn']}  version {p['version']}  {p['status']}")


def _check_source(location: str) -> None:
    from loraops import s3_layout

    if location.startswith("s3://"):
        try:
            s3_layout.split_s3_uri(location)
        except ValueError as error:
            raise UsageError(str(error)) from None
    elif location.startswith("hf://") and "/" not in location.removeprefix("hf://"):
        raise UsageError(f"{location!r} is not hf://<org>/<model>")


@registry_errors
def import_base(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from loraops import base_import
    from loraops.base_sources import source_from
    from loraops.naming import base_group_name

    _check_source(args.source)
    base_group_name(args.model_id)  # a usage error before anything is read
    registry = open_registry(args)
    token = os.environ.get(args.hub_token_env, "")
    source = source_from(args.source, registry.s3, revision=args.revision, token=token)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    # on stderr (stdout holds only the result) and only on a terminal; the total is every byte read (hashing)
    # and written once
    bars = not args.json and sys.stderr.isatty()
    with Progress(*columns, console=console(stderr=True), disable=not bars, transient=True) as progress:
        task = progress.add_task(f"import {args.model_id}", total=None)
        package = base_import.import_base(
            registry,
            source,
            args.model_id,
            licence=args.licence,
            progress=lambda name, n: progress.update(task, advance=n, description=name),
            total=lambda n: progress.update(task, total=n),
        )
    _package(args, package)
    return 0


@registry_errors
def register_base(args: argparse.Namespace) -> int:
    from loraops import s3_layout

    try:
        s3_layout.digest_segment(args.digest)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _package(args, open_registry(args).register_base(args.model_id, args.digest))
    return 0
