"""What a run trained: its loss over every step and the micro-batches its steps consumed, in any layout."""

from __future__ import annotations

import math

import pytest

from loraops_trainer.accounting import consumed_bins, run_train_loss


def test_the_run_loss_weights_each_logged_window_by_its_steps():
    """Windows of 3, 1 (a checkpoint at step 4), 2 and 2 steps: a plain mean of the entries would be 2.5."""
    history = [{"loss": 1.0, "step": 3}, {"loss": 2.0, "step": 4}, {"loss": 3.0, "step": 6}, {"loss": 4.0, "step": 8}]
    history.insert(2, {"eval_loss": 9.0, "step": 4})  # entries without a training loss are not windows
    assert run_train_loss(history) == pytest.approx((3 * 1 + 2 + 2 * 3 + 2 * 4) / 8)


def test_a_window_with_a_skipped_non_finite_step_is_left_out():
    assert run_train_loss([{"loss": 1.0, "step": 2}, {"loss": math.nan, "step": 4}, {"loss": 3.0, "step": 5}]) == (
        pytest.approx((2 * 1 + 3) / 3)
    )
    assert math.isnan(run_train_loss([{"loss": math.inf, "step": 1}]))


@pytest.mark.parametrize(
    ("bins", "world", "accumulation", "steps", "expected"),
    [
        (10, 1, 1, 3, (0, 3)),  # part of one pass
        (10, 2, 1, 3, (0, 6)),  # each step takes one micro-batch per rank
        (10, 1, 2, 3, (0, 6)),  # ... or two on one rank: the same six
        (10, 1, 3, 4, (1, 0)),  # 4 steps of 3 take 10 (the last step of the pass takes the one left)
        (11, 2, 1, 6, (1, 0)),  # 6 per rank: the second rank's sixth wraps around to the start
        (11, 2, 1, 5, (0, 10)),
        (10, 2, 1, 12, (2, 4)),  # two passes and two steps of a third
        (3, 4, 1, 1, (1, 0)),  # more ranks than micro-batches: every rank still steps
    ],
)
def test_micro_batches_consumed(bins, world, accumulation, steps, expected):
    assert consumed_bins(bins, world, accumulation, steps) == expected
