"""What a run trained, whatever its layout and however often it was resumed: the mean loss over all its steps and
ranks, the samples and tokens its steps consumed, and whether a resumed checkpoint already holds the last step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from loraops_trainer.packing import PackedDataset


class LogAtSaveAndEnd(TrainerCallback):
    """Log (transformers gathers the loss over every rank when it logs) at every checkpoint and at the last step,
    so the logged history covers every step: none is left to rank 0's local remainder, none lost to a resume.

    Must come after the callbacks that ask for a save or a stop (the Trainer's flow callback, the SIGTERM guard)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop or state.global_step >= state.max_steps:
            control.should_log = True
        return control


def run_train_loss(log_history: list[dict[str, Any]]) -> float:
    """Mean training loss per optimizer step over the whole run, from the logged history (each entry is the mean
    since the entry before; a resumed run's history starts with the checkpoint's). Windows with a non-finite loss
    (skipped steps) are left out; NaN when nothing finite was logged."""
    total = steps = 0.0
    previous = 0
    for entry in log_history:
        if "loss" not in entry:
            continue
        window = entry["step"] - previous
        previous = entry["step"]
        if window > 0 and math.isfinite(entry["loss"]):
            total += entry["loss"] * window
            steps += window
    return total / steps if steps else math.nan


def consumed_bins(bins: int, world_size: int, accumulation: int, steps: int) -> tuple[int, int]:
    """(whole passes, micro-batches of the last partial pass) that ``steps`` optimizer steps consumed.

    The Trainer reads the packed micro-batches in order (sequential sampling); with ``world_size`` ranks, rank r
    takes micro-batches r, r + world_size, ... (accelerate's batch sharding), each rank ``ceil(bins / world_size)``
    per pass, and a step takes ``accumulation`` of them per rank (fewer at the end of a pass)."""
    per_rank = math.ceil(bins / world_size)
    steps_per_pass = max(math.ceil(per_rank / accumulation), 1)
    passes, rest = divmod(steps, steps_per_pass)
    return passes, min(min(rest * accumulation, per_rank) * world_size, bins)


def trained_amount(dataset: PackedDataset, world_size: int, accumulation: int, steps: int) -> tuple[int, int]:
    """(distinct samples trained on, tokens trained) after ``steps`` optimizer steps."""
    passes, partial = consumed_bins(len(dataset), world_size, accumulation, steps)
    partial_samples = [index for group in dataset.bins[:partial] for index in group]
    partial_tokens = sum(len(dataset.samples[index]) for index in partial_samples)
    samples = len(dataset.samples) if passes else len(partial_samples)
    return samples, passes * dataset.tokens + partial_tokens


def checkpoint_step(checkpoint: str) -> int:
    """The optimizer step a checkpoint was saved at."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def planned_steps(trainer: Any) -> int:
    """The optimizer steps the whole run takes (``max_steps``, or the epochs over this layout's micro-batches)."""
    return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])


def restore_final_checkpoint(trainer: Any, checkpoint: str) -> None:
    """The weights and state of a checkpoint that already holds the run's last step (transformers would train one
    step more before it checks the step count)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    weights = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(trainer.model, weights)
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint}: adapter weights that the model does not have: {result.unexpected_keys[:3]}")
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    state.is_local_process_zero = trainer.is_local_process_zero()  # the file holds rank 0's
    state.is_world_process_zero = trainer.is_world_process_zero()
    trainer.state = state
