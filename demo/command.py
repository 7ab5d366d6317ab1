"""The ``loraops`` command run in this process against the emulator, as an operator runs it against AWS."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING

from demo.local_aws import REGION, LocalAWS

if TYPE_CHECKING:
    from demo.environment import DemoEnvironment


def loraops(aws: LocalAWS, environment: DemoEnvironment, *argv: str, show: bool = True) -> str:
    """Run the ``loraops`` command against the emulator; returns (and prints) what it printed."""
    from loraops.cli import main

    options = ["--bucket", environment.bucket, "--region", REGION, "--endpoint-url", aws.url]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([*argv, *options])
    if code != 0:
        raise SystemExit(f"loraops {' '.join(argv)} failed: {out.getvalue().strip()}")
    if show:
        print(out.getvalue().rstrip())
    return out.getvalue()
