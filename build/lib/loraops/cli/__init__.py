"""The ``loraops`` command. Nouns (``base``, ``finetune``, ``models``, ``storage``) arrive with the registry."""

from __future__ import annotations

import argparse

import loraops


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraops", description=loraops.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"loraops {loraops.__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    build_parser().print_help()
    return 0
