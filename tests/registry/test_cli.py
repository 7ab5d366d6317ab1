"""The `loraops` command is a thin door over loraops.registry: these tests check the wiring and the output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loraops.cli import main
from tests.registry.conftest import BUCKET, MODEL_ID, REGION


def _run(capsys, emulator, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--bucket", BUCKET, "--region", REGION, "--endpoint-url", emulator])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_tree_approve_and_report(registry, emulator, tiny_base, capsys):
    code, out, _ = _run(capsys, emulator, "base", "import", str(tiny_base), "--model-id", MODEL_ID, "--json")
    assert code == 0
    package = json.loads(out)
    assert package["status"] == "PendingManualApproval" and package["version"] == 1

    code, out, _ = _run(capsys, emulator, "models", "approve", package["arn"], "--reason", "evaluated")
    assert code == 0 and "Approved" in out

    code, out, _ = _run(capsys, emulator, "models", "tree")
    assert code == 0
    assert "meta-llama--Llama-2-7b-hf" in out and "v1 Approved" in out and "collections:" in out

    code, out, _ = _run(capsys, emulator, "storage", "report", "--json")
    (base,) = json.loads(out)["bases"]
    assert code == 0 and base["base_bytes"] > 0 and base["adapter_variants"] == 0


def test_errors_are_one_line_with_a_non_zero_exit(registry, emulator, capsys):
    code, out, err = _run(
        capsys, emulator, "base", "register", "--model-id", MODEL_ID, "--weights-digest", "sha256:" + "0" * 64
    )
    assert code == 1 and out == ""
    assert err.startswith("loraops: error: no base manifest at s3://") and err.count("\n") == 1
    code = main(["models", "tree", "--region", REGION])
    assert code == 1 and "name the environment's artifact bucket" in capsys.readouterr().err


def test_version_and_help_need_no_extras():
    command = [str(Path(sys.executable).with_name("loraops"))]  # the installed console script
    result = subprocess.run([*command, "--version"], capture_output=True, text=True)
    assert result.stdout.strip().startswith("loraops ")
    result = subprocess.run([sys.executable, "-m", "loraops.cli", "--help"], capture_output=True, text=True)
    assert "models tree" in result.stdout and "storage report" in result.stdout
