"""``loraops base import | register``: put a base model under ``base/`` uncompressed and register it."""

from __future__ import annotations

import argparse
from pathlib import Path

from loraops.cli.common import add_registry_options, emit, open_registry, registry_errors


def add_commands(nouns) -> None:
    base = nouns.add_parser("base", help="base models").add_subparsers(dest="verb", metavar="{import,register}")
    imp = base.add_parser("import", help="upload a local Hugging Face folder under base/ and register it")
    imp.add_argument("folder", type=Path)
    imp.add_argument("--model-id", required=True, help="Hugging Face id, e.g. meta-llama/Llama-2-7b-hf")
    imp.add_argument("--licence", default="", help="licence accepted for the weights (recorded in the package)")
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
    from rich.progress import Progress

    registry = open_registry(args)
    files = [p for p in args.folder.iterdir() if p.is_file()] if args.folder.is_dir() else []
    with Progress(disable=args.json) as progress:
        task = progress.add_task(f"upload {args.model_id}", total=sum(p.stat().st_size for p in files) or None)
        package = registry.import_base(
            args.folder, args.model_id, licence=args.licence, progress=lambda name, n: progress.advance(task, n)
        )
    _package(args, package)
    return 0


@registry_errors
def register_base(args: argparse.Namespace) -> int:
    _package(args, open_registry(args).register_base(args.model_id, args.weights_digest))
    return 0
