"""``make demo``'s flow end to end, reduced (same code, fewer steps and prompts), and the emulator's lifetime."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.environment import resolve
from demo.local_aws import LocalAWS
from tests.helpers import ROOT


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _demo(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "demo", "--workdir", str(workdir), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )


def test_the_demo_runs_the_whole_lifecycle(tmp_path):
    process = _demo(tmp_path, "--steps", "4", "--prompts", "2", "--max-new-tokens", "8")
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]

    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    steps = [s["step"] for s in summary["steps"]]
    assert len(steps) == 9 and steps[0].startswith("synthesize") and steps[-1].startswith("serve")
    assert summary["answers"] == 2 and summary["answers_agree"] == 2  # base + adapter answers as merged does
    assert summary["s3_operations_while_serving"] and not {"PutObject", "CopyObject", "UploadPart"} & set(
        summary["s3_operations_while_serving"]
    )
    (base,) = summary["storage"]["bases"]
    assert base["adapter_variants"] == 1 and base["merged_variants"] == 1
    # one adapter kept merged would be one more merged model, of the merged variant's measured size
    assert base["saved_by_separate_adapters_bytes"] == base["merged_bytes"] - base["adapter_bytes"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    for section in ("## Steps", "## Loss curves", "## Registry", "## Storage", "## Answers"):
        assert section in markdown
    assert markdown.count("v1 Approved") == 3  # base, adapter and merged, each approved with `loraops models approve`
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # both loss curves, inlined
    port = int(output.split("local AWS emulator at http://127.0.0.1:")[1].split()[0])
    assert not _port_open(port)  # stopped at the end

    second = _demo(tmp_path, "--steps", "2", "--prompts", "1", "--max-new-tokens", "4")
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-4000:]
    assert "reusing the stand-in base" in output  # and the emulator started clean: v1 again, not v2
    assert (tmp_path / "report" / "report.md").read_text().count("v1 Approved") == 3


def test_ctrl_c_stops_the_demo_its_training_container_and_the_emulator(tmp_path):
    process = _demo(tmp_path, "--steps", "400")
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "fine-tune (adapter)" in line:
            break
    time.sleep(8)  # inside the training container by now
    os.killpg(process.pid, signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == 130, output[-3000:]
    assert "interrupted: the emulator was stopped" in output
    port = int(output.split("local AWS emulator at http://127.0.0.1:")[1].split()[0])
    assert not _port_open(port)
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "run" / "opt_ml")], capture_output=True, text=True)
    assert leftover.stdout == ""  # no training container left behind


def test_the_emulator_stops_when_the_work_inside_fails():
    with pytest.raises(RuntimeError, match="boom"), LocalAWS() as aws:
        port = aws.port
        assert _port_open(port)
        raise RuntimeError("boom")
    assert not _port_open(port)


def test_cross_stack_values_get_stand_ins_and_the_rest_is_kept():
    joined = {"Fn::Join": ["", ['{"Subnets": ["', {"Fn::ImportValue": "net:Subnet1"}, '"]}']]}
    assert json.loads(resolve(joined)) == {"Subnets": ["demo-stand-in"]}
    with pytest.raises(ValueError, match="no stand-in"):
        resolve({"Fn::If": ["c", "a", "b"]})
