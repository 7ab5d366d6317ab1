"""Data-parallel training under torchrun (gloo on CPU), as SageMaker's torch_distributed starts it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loraops.manifest import Manifest
from tests.helpers import TRAIN_SCRIPT, fast_args, train_in_process, until_stopped_args, wait_until_training


def _weights_digests(log: str) -> dict[int, str]:
    return {int(rank): digest for rank, digest in re.findall(r"rank (\d+) trainable weights (sha256:\w+)", log)}


def _train_losses(folder) -> list[float]:
    return [r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _checkpoint_weights(checkpoints: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoints / f"checkpoint-{step}" / "adapter_model.safetensors"))  # fp32, as trained


#: Largest weight difference allowed between two ranks and one process with the same batches (different reduction
#: order and thread counts). Measured on the tiny base, 4 steps: 1.1e-6 when DDP works; 4.9e-3 when it is broken
#: (``use_cpu=False`` on CPU: each rank trains its own copy), against trained lora_B weights of at most 2.5e-3.
SAME_BATCHES_TOLERANCE = 1e-4


def test_two_ranks_stay_identical_and_match_one_process_on_the_same_batches(tiny_base, tmp_path, capsys):
    """Two ranks with one micro-batch each see, per step, the same two micro-batches as one process with two
    accumulation steps. The ranks (one layout) must hold bitwise the same weights; the two layouts add the same
    gradients in another order with other thread counts, so they must agree within a tolerance that a broken DDP
    exceeds 50-fold (``SAME_BATCHES_TOLERANCE``)."""
    # fewer steps than logging_steps: the run's loss must still be the mean over both ranks and every step
    common = dict(output_mode="adapter", sample_generations=0, logging_steps=10, max_steps=4, save_steps=4)
    ddp = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(TRAIN_SCRIPT),
        *fast_args(tiny_base, ddp, checkpoint_dir=tmp_path / "ddp-checkpoints", **common),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = _weights_digests(result.stderr)
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests
    assert "data parallel: 2 processes" in result.stderr
    manifest = Manifest.read(ddp)
    manifest.verify(ddp)

    single = tmp_path / "single"
    args = fast_args(
        tiny_base, single, checkpoint_dir=tmp_path / "single-checkpoints", gradient_accumulation_steps=2, **common
    )
    code, metrics, err = train_in_process(args, capsys)
    assert code == 0, err[-3000:]
    ddp_weights = _checkpoint_weights(tmp_path / "ddp-checkpoints", 4)
    single_weights = _checkpoint_weights(tmp_path / "single-checkpoints", 4)
    assert ddp_weights.keys() == single_weights.keys()
    difference = max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in ddp_weights)
    assert difference < SAME_BATCHES_TOLERANCE, difference
    assert len(_train_losses(ddp)) == 1 and _train_losses(ddp) == pytest.approx(_train_losses(single), rel=1e-4)
    # the same micro-batches trained, counted alike
    assert manifest.data["training"]["samples_trained"] == Manifest.read(single).data["training"]["samples_trained"]
    assert manifest.metrics["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-4)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc: no extra package)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tiny_base, tmp_path):
    """Only rank 1 receives SIGTERM: the ranks agree (over a gloo group) and all stop after the same step, rank 0
    saves the checkpoint, nothing is published. Without the agreement rank 0 would wait in the next all-reduce."""
    out, checkpoints, reports = tmp_path / "model", tmp_path / "checkpoints", tmp_path / "reports"
    args = until_stopped_args(tiny_base, out, checkpoints, reports)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAIN_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_training(process, reports)
    (rank1,) = [pid for pid in _children(process.pid) if _rank_of(pid) == 1]
    os.kill(rank1, signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    stopped = re.findall(r"train: error: stopped by SIGTERM at step (\d+)", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]
    assert (checkpoints / f"checkpoint-{stopped[0]}" / "trainer_state.json").is_file()
    assert not out.exists() or not any(out.iterdir())
