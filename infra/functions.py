"""Lambda function code: a function's folder under ``lambda/``, the ``loraops`` package and AWS Lambda Powertools,
staged as one asset.

Powertools is taken from the synth environment, where ``requirements.txt`` pins it: synth downloads nothing and
needs no Docker (``PythonFunction`` would), and the deployed version is the one the tests ran.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from functools import cache
from pathlib import Path

import aws_cdk as cdk
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


def _sources(name: str) -> list[tuple[str, Path]]:
    """(path in the asset, file) for every file of the function's asset, in a fixed order."""
    roots = [(".", REPO_ROOT / "lambda" / name), ("loraops", REPO_ROOT / "loraops")]
    roots += [(_source_of(module).name, _source_of(module)) for module in VENDORED]
    files = []
    for prefix, root in roots:
        found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        files += [
            (str(Path(prefix) / (p.relative_to(root) if root.is_dir() else p.name)), p)
            for p in found
            if "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    return files


@cache
def staged_asset(name: str) -> tuple[Path, str]:
    """The function's asset folder, named by its content's digest: computed once per process, written once (to a
    temporary sibling, then renamed), so concurrent synths never see a half-written or removed folder."""
    files = _sources(name)
    digest = hashlib.sha256()
    for relative, path in files:
        digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    content = digest.hexdigest()
    staging = BUILD / f"{name}-{content[:16]}"
    if not staging.is_dir():
        BUILD.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=BUILD))
        for relative, path in files:
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, partial / relative)
        try:
            partial.rename(staging)
        except OSError:  # another process staged the same content first
            shutil.rmtree(partial, ignore_errors=True)
    return staging, content


def function_code(name: str) -> lambda_.Code:
    """``lambda/<name>/`` + ``loraops/`` + the vendored modules, staged under ``.build/lambda/<name>-<digest>``;
    the digest is the asset's hash, so CDK does not hash the folder again for each environment."""
    staging, content = staged_asset(name)
    return lambda_.Code.from_asset(str(staging), asset_hash=content, asset_hash_type=cdk.AssetHashType.CUSTOM)
