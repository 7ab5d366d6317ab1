"""``loraops storage report``: what merged and separate fine-tunes cost in bytes."""

from __future__ import annotations

import argparse

from loraops.cli.common import add_registry_options, emit, open_registry, registry_errors, size


def add_commands(nouns) -> None:
    storage = nouns.add_parser("storage", help="storage costs").add_subparsers(
        dest="verb", metavar="{report}", help="what to do"
    )
    report = storage.add_parser("report", help="bytes held for merged vs adapter variants, and what adapters saved")
    add_registry_options(report)
    report.set_defaults(run=show_report)


COLUMNS = (
    "base",
    "base size",
    "adapters",
    "adapter bytes",
    "merged",
    "merged bytes",
    "adapters if merged",
    "saved by separate adapters",
)


def report_rows(report) -> list[list[str]]:
    """One row of :data:`COLUMNS` per base, sizes made readable."""
    return [
        [
            b["base"],
            size(b["base_bytes"]),
            str(b["adapter_variants"]),
            size(b["adapter_bytes"]),
            str(b["merged_variants"]),
            size(b["merged_bytes"]),
            size(b["adapters_if_merged_bytes"]),
            size(b["saved_by_separate_adapters_bytes"]),
        ]
        for b in report["bases"]
    ]


def render_report(report):
    from rich.table import Table

    table = Table(*COLUMNS)
    table.columns[0].overflow = "fold"  # a base's name is shown whole, folded if the terminal is narrow
    for row in report_rows(report):
        table.add_row(*row)
    return table


@registry_errors
def show_report(args: argparse.Namespace) -> int:
    emit(args, open_registry(args).storage_report(), render_report)
    return 0
