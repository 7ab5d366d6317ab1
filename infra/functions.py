"""Lambda function code: a function's folder under ``lambda/``, the ``loraops`` package and AWS Lambda Powertools,
staged as one asset.

Powertools is taken from the synth environment, where ``requirements.txt`` pins it: synth downloads nothing and
needs no Docker (``PythonFunction`` would), and the deployed version is the one the tests ran.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD = REPO_ROOT / ".build" / "lambda"
#: Modules the functions import beyond the Lambda runtime's own (which has boto3).
VENDORED = ("aws_lambda_powertools", "typing_extensions")


def _source_of(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{module} is not installed in the synth environment (requirements.txt pins it)")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def function_code(name: str) -> lambda_.Code:
    """``lambda/<name>/`` + ``loraops/`` + the vendored modules, staged under ``.build/lambda/<name>``."""
    staging = BUILD / name
    shutil.rmtree(staging, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "lambda" / name, staging, ignore=ignore)
    shutil.copytree(REPO_ROOT / "loraops", staging / "loraops", ignore=ignore)
    for module in VENDORED:
        source = _source_of(module)
        if source.is_dir():
            shutil.copytree(source, staging / source.name, ignore=ignore)
        else:
            shutil.copy2(source, staging / source.name)
    return lambda_.Code.from_asset(str(staging))
