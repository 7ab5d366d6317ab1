"""Invoke a loraops Lambda function in this process, the way Lambda loads it (the emulator cannot run functions
without Docker)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from demo.environ import restore_environ, set_environ

ROOT = Path(__file__).resolve().parents[1]


class LambdaContext:
    """The fields of Lambda's context object that Powertools reads."""

    function_name = "loraops-local-function"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:loraops-local-function"
    aws_request_id = "local-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def load_handler(name: str) -> ModuleType:
    """``lambda/<name>/handler.py`` as a fresh module (a cold start)."""
    spec = importlib.util.spec_from_file_location(f"{name}_handler", ROOT / "lambda" / name / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke(name: str, event: dict[str, Any], environment: dict[str, str]) -> Any:
    """Run function ``name`` on ``event`` with the environment the stacks give it (``environment``)."""
    saved = set_environ(environment)
    try:
        return load_handler(name).handler(event, LambdaContext())
    finally:
        restore_environ(saved)
