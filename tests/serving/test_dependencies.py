"""The serving package runs where only its own dependencies are installed (the LMI image has no boto3)."""

from __future__ import annotations

import subprocess
import sys

BLOCK_AWS_CLIENTS = """
import builtins, sys
real = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in ("boto3", "botocore"):
        raise ImportError(f"{name} is not installed here")
    return real(name, *args, **kwargs)
builtins.__import__ = guarded
import loraops_serving.app, loraops_serving.engine, loraops_serving.layouts
"""


def test_the_serving_package_imports_without_the_aws_clients():
    result = subprocess.run([sys.executable, "-c", BLOCK_AWS_CLIENTS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
