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
        capsys, emulator, "base", "register", "--model-id", MODEL_ID, "--digest", "sha256:" + "0" * 64
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


def test_usage_errors_exit_2_with_one_line_and_change_nothing(registry, aws, emulator, capsys):
    cases = [
        (["base", "import", "s3://", "--model-id", MODEL_ID], "is not an s3://bucket/key URI"),
        (["base", "register", "--model-id", MODEL_ID, "--digest", "not-a-digest"], "sha256:<64 hex digits>"),
        (["base", "import", "./x", "--model-id", "llama"], "must look like '<org>/<model>'"),
    ]
    for argv, message in cases:
        code, out, err = _run(capsys, emulator, *argv)
        assert code == 2 and out == "" and message in err and err.count("\n") == 1, (argv, err)
    code = main(["models", "tree", "--bucket", BUCKET, "--region", "mars-north-1", "--endpoint-url", emulator])
    err = capsys.readouterr().err
    assert code == 2 and "unknown region 'mars-north-1'" in err and err.count("\n") == 1
    assert aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", []) == []


def test_ctrl_c_exits_130_with_one_line(registry, emulator, tiny_base, capsys, monkeypatch):
    from loraops import base_import

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(base_import, "import_base", interrupted)
    code, out, err = _run(capsys, emulator, "base", "import", str(tiny_base), "--model-id", MODEL_ID)
    assert code == 130 and out == "" and err == "loraops: interrupted\n"


def test_json_has_a_schema_version_numbers_and_nulls_and_describe_matches(registry, emulator, tiny_base, capsys):
    code, out, _ = _run(capsys, emulator, "base", "import", str(tiny_base), "--model-id", MODEL_ID, "--json")
    package = json.loads(out)
    assert code == 0 and package["schema_version"] == 1 and isinstance(package["version"], int)
    code, out, _ = _run(capsys, emulator, "models", "describe", package["arn"], "--json")
    described = json.loads(out)
    assert code == 0 and described == package and described["metadata"]["contentDigest"].startswith("sha256:")
    code, out, _ = _run(capsys, emulator, "models", "tree", "--json")
    tree = json.loads(out)
    (version,) = tree["bases"][0]["groups"][0]["versions"]
    assert tree["schema_version"] == 1 and version["eval_loss"] is None and version["dataset"] is None
    assert isinstance(version["bytes"], int)


def test_output_off_a_terminal_is_not_wrapped_and_progress_is_not_on_stdout(registry, emulator, tiny_base, capsys):
    code, out, err = _run(capsys, emulator, "base", "import", str(tiny_base), "--model-id", MODEL_ID)
    assert code == 0 and out.count("\n") == 1 and out.startswith("arn:aws:sagemaker:")  # one line, the whole ARN
    code, out, _ = _run(capsys, emulator, "models", "tree")
    arn_line = [line for line in out.splitlines() if "collections:" in line]
    assert code == 0 and len(arn_line) == 1 and len(arn_line[0]) > 80


def test_hyperparameters_are_checked_by_the_trainers_parser_before_anything_starts(registry, emulator, capsys):
    argv = ["finetune", "start", "--model-id", MODEL_ID, "--training-uri", f"s3://{BUCKET}/datasets/d/x/"]
    argv += ["--workflow-arn", "arn:aws:states:us-east-1:123456789012:stateMachine:loraops-test-finetune"]
    code, out, err = _run(capsys, emulator, *argv, "--hp", "lora_r=banana")
    assert code == 2 and out == "" and "hyperparameter 'lora_r'" in err and "banana" in err
    code, _, err = _run(capsys, emulator, *argv, "--hp", "no_such_setting=1")
    assert code == 2 and "unknown hyperparameter" in err
