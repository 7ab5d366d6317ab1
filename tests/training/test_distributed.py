"""Data-parallel training under torchrun (gloo on CPU), as SageMaker's torch_distributed starts it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from loraops.manifest import Manifest
from tests.helpers import TRAIN_SCRIPT, fast_args, train_in_process


def _weights_digests(log: str) -> dict[int, str]:
    return {int(rank): digest for rank, digest in re.findall(r"rank (\d+) trainable weights (sha256:\w+)", log)}


def _train_losses(folder) -> list[float]:
    return [r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_ranks_stay_identical_and_match_one_process_on_the_same_batches(tiny_base, tmp_path, capsys):
    """Two ranks with one micro-batch each see, per step, the same two micro-batches as one process with two
    accumulation steps: the ranks' weights must be equal, and the logged loss must match the single process."""
    common = dict(output_mode="adapter", sample_generations=0, logging_steps=1, max_steps=4)
    ddp = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(TRAIN_SCRIPT),
        *fast_args(tiny_base, ddp, **common),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = _weights_digests(result.stderr)
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests
    Manifest.read(ddp).verify(ddp)

    single = tmp_path / "single"
    code, _, err = train_in_process(fast_args(tiny_base, single, gradient_accumulation_steps=2, **common), capsys)
    assert code == 0, err[-3000:]
    assert _weights_digests(err)[0] == digests[0]
    assert _train_losses(ddp) == pytest.approx(_train_losses(single), rel=1e-4)
