"""``make demo``'s flow end to end, reduced (the same code with a briefly pre-trained stand-in, fewer steps and
prompts) and run once for the module, with one test per property of its outputs; Ctrl-C during a fine-tune (on the
same stand-in, reused); the emulator's lifetime; the report's parts."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.__main__ import parse_args
from demo.environ import restore_environ, set_environ
from demo.environment import resolve
from demo.local_aws import LocalAWS
from demo.report import render_html
from demo.scores import rouge_l
from demo.stand_in import CORPUS, HELD_OUT, corpus, split_dolly
from demo.training_job import container_environment
from tests.helpers import DOLLY, ROOT

#: The stand-in in CI: the tiny shape, briefly pre-trained. Held-out loss falling under a fine-tune holds for any base
#: that has not learnt the prompt template, so it shows that as well as the demo's larger one.
BASE_STEPS = "150"
STAND_IN = ("--size", "tiny", "--base-steps", BASE_STEPS)
REDUCED = (*STAND_IN, "--steps", "8", "--prompts", "2", "--max-new-tokens", "8")
#: Upper bounds for events on a busy 2-core machine (never waited for in full unless something hangs).
DEMO_TIMEOUT = 1800
EVENT_TIMEOUT = 900


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _emulator_port(output: str) -> int:
    return int(output.split("local AWS emulator at http://127.0.0.1:")[1].split()[0])


def _demo(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", None)  # as `python -m demo` from a shell: the demo's own
    return subprocess.Popen(
        [sys.executable, "-m", "demo", "--workdir", str(workdir), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
        preexec_fn=_as_in_a_terminal,
    )


def _as_in_a_terminal() -> None:
    """Ctrl-C's default action, as a terminal's foreground job has it: a suite run as a background job of a
    non-interactive shell (``pytest &``) ignores SIGINT, every child inherits that, and no Ctrl-C could reach them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    output: str
    summary: dict[str, Any]

    @property
    def report(self) -> Path:
        return self.workdir / "report"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> DemoRun:
    """One reduced ``python -m demo``, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("demo")
    process = _demo(workdir, *REDUCED)
    output, _ = process.communicate(timeout=DEMO_TIMEOUT)
    assert process.returncode == 0, output[-4000:]
    return DemoRun(workdir, output, json.loads((workdir / "report" / "report.json").read_text()))


def test_the_demo_runs_every_step_and_stops_the_emulator(demo_run):
    steps = [s["step"] for s in demo_run.summary["steps"]]
    assert len(steps) == 10 and steps[0].startswith("synthesize") and steps[-1].startswith("held-out loss")
    assert "built the stand-in base" in demo_run.output
    assert not _port_open(_emulator_port(demo_run.output))  # stopped at the end


def test_the_adapter_lowers_the_held_out_loss_and_merged_answers_as_base_plus_adapter(demo_run):
    held = demo_run.summary["held_out"]
    assert held["held_back"] == HELD_OUT and 0 < held["records"] <= HELD_OUT and held["tokens"] > 0
    assert held["loss"]["adapter"] < held["loss"]["base"]
    assert held["loss"]["merged"] == pytest.approx(held["loss"]["adapter"], abs=0.05)  # bf16 merge vs fp32 + adapter
    answers = demo_run.summary["answers"]
    assert len(answers) == 2 and demo_run.summary["answers_agree"] == 2
    for answer in answers:
        assert answer["adapter"] == answer["merged"]
        assert answer["rouge_l"]["base"] == round(rouge_l(answer["reference"], answer["base"]), 3)


def test_serving_reads_the_registered_prefixes_and_writes_nothing(demo_run):
    operations = set(demo_run.summary["s3_operations_while_serving"])
    assert operations and not {"PutObject", "CopyObject", "UploadPart"} & operations
    assert demo_run.summary["s3_writes_while_serving"] == 0


def test_the_registry_and_storage_show_one_base_with_both_variants(demo_run):
    (base,) = demo_run.summary["storage"]["bases"]
    assert base["adapter_variants"] == 1 and base["merged_variants"] == 1
    # one adapter kept merged would be one more merged model, of the merged variant's measured size
    assert base["saved_by_separate_adapters_bytes"] == base["merged_bytes"] - base["adapter_bytes"]
    # base, adapter and merged, each approved with `loraops models approve`, in a fresh emulator (v1)
    assert demo_run.summary["tree"].count("v1 Approved") == 3


def test_the_report_holds_every_figure_in_json(demo_run):
    html = (demo_run.report / "report.html").read_text()
    assert render_html(demo_run.summary, demo_run.report) == html  # the HTML shows nothing report.json lacks
    assert html.count("data:image/png;base64,i") == 2  # both loss curves, inlined
    for run in ("adapter", "merged"):
        assert demo_run.summary["training_loss"][run]["logged"]
    markdown = (demo_run.report / "report.md").read_text()
    for section in ("## Steps", "## Training loss", "## Held-out loss", "## Registry", "## Storage", "## Answers"):
        assert section in markdown


def test_the_closing_note_shows_the_held_out_table_and_an_answer_without_the_node_banner(demo_run):
    note = demo_run.output.split("held-out loss (")[-1]
    for line in ("base + adapter", "merged", "prompt:", "dolly:", "base (ROUGE-L", "fine-tune (ROUGE-L", "report:"):
        assert line in note
    assert f"{demo_run.summary['held_out']['loss']['base']:.4f}" in note
    assert not [line for line in demo_run.output.splitlines() if line.startswith("b'")]  # jsii's relayed banner


class Lines:
    """A process's output lines, read as they come (a thread drains the pipe), waited for with an upper bound."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {timeout} s:\n{''.join(self.seen)[-3000:]}")

    def rest(self, timeout: float) -> str:
        """Everything up to the end of the output."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def _containers(workdir: Path) -> str:
    return subprocess.run(["pgrep", "-f", str(workdir / "run" / "opt_ml")], capture_output=True, text=True).stdout


def test_ctrl_c_stops_the_demo_its_training_container_and_the_emulator(demo_run, tmp_path):
    shutil.copytree(demo_run.workdir / "base-tiny", tmp_path / "base-tiny")  # a second run: the stand-in is kept
    process = _demo(tmp_path, *STAND_IN, "--steps", "10000")
    lines = Lines(process)
    try:
        lines.wait_for("reusing the stand-in base", EVENT_TIMEOUT)
        imported = lines.wait_for("model-package/", EVENT_TIMEOUT)
        assert re.search(r"model-package/[^/\s]+/1 ", imported), imported  # the emulator started empty: v1 again
        lines.wait_for("fine-tune (adapter)", EVENT_TIMEOUT)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while not list((tmp_path / "run" / "opt_ml").glob("*/output/data/metrics.jsonl")):  # a step logged
            assert time.monotonic() < deadline, "the training container logged no step"
            with pytest.raises(subprocess.TimeoutExpired):  # the demo must not end on its own meanwhile
                process.wait(timeout=0.5)
        assert _containers(tmp_path)  # inside the training container now
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=EVENT_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = lines.rest(EVENT_TIMEOUT)
    assert process.returncode == 130, output[-3000:]
    assert "interrupted: the emulator was stopped" in output
    assert not _port_open(_emulator_port(output))
    assert _containers(tmp_path) == ""  # no training container left behind


def test_the_emulator_stops_when_the_work_inside_fails():
    with pytest.raises(RuntimeError, match="boom"), LocalAWS() as aws:
        port = aws.port
        assert _port_open(port)
        raise RuntimeError("boom")
    assert not _port_open(port)


def test_the_environment_a_function_or_the_emulator_sets_is_put_back(monkeypatch):
    """What was set comes back, what was unset is unset again (a function's variables never leak into the next)."""
    monkeypatch.setenv("LORAOPS_DEMO_SET", "before")
    monkeypatch.delenv("LORAOPS_DEMO_UNSET", raising=False)
    saved = set_environ({"LORAOPS_DEMO_SET": "during", "LORAOPS_DEMO_UNSET": "during"})
    assert os.environ["LORAOPS_DEMO_SET"] == os.environ["LORAOPS_DEMO_UNSET"] == "during"
    restore_environ(saved)
    assert os.environ["LORAOPS_DEMO_SET"] == "before" and "LORAOPS_DEMO_UNSET" not in os.environ


def test_cross_stack_values_get_stand_ins_and_the_rest_is_kept():
    joined = {"Fn::Join": ["", ['{"Subnets": ["', {"Fn::ImportValue": "net:Subnet1"}, '"]}']]}
    assert json.loads(resolve(joined)) == {"Subnets": ["demo-stand-in"]}
    with pytest.raises(ValueError, match="no stand-in"):
        resolve({"Fn::If": ["c", "a", "b"]})


def test_the_held_out_records_are_in_neither_the_pre_training_nor_the_fine_tuning_data():
    training, held_out = split_dolly(DOLLY)
    assert len(held_out) == HELD_OUT
    held_texts = {json.dumps(record) for record in held_out}
    assert not held_texts & {json.dumps(json.loads(line)) for line in training.decode().splitlines()}
    pre_training = set(corpus(DOLLY))
    assert pre_training and not pre_training & {r[k].strip() for r in held_out for k in CORPUS if r.get(k, "").strip()}
    with pytest.raises(SystemExit):
        parse_args(["--prompts", str(HELD_OUT + 1)])  # answers come from the held-out records only


def test_the_training_container_runs_on_one_thread_unless_told_otherwise(tmp_path):
    environment = container_environment("job", tmp_path, {"PATH": "/bin"})
    assert environment["OMP_NUM_THREADS"] == "1" and environment["PATH"] == "/bin"
    assert environment["SM_MODEL_DIR"] == str(tmp_path / "model")
    assert container_environment("job", tmp_path, {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"


def test_rouge_l_is_the_f_measure_of_the_longest_common_word_subsequence():
    assert rouge_l("The cat sat on the mat.", "the cat, on the MAT") == pytest.approx(2 * 1 * (5 / 6) / (1 + 5 / 6))
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)  # one word in order
    assert rouge_l("Paris", "") == 0.0 and rouge_l("Paris", "London") == 0.0
    assert rouge_l("Paris is the capital", "Paris is the capital") == 1.0
