"""Padding-free packing: samples concatenated into micro-batches of a token budget.

Each micro-batch is one row: the samples' tokens back to back, ``position_ids`` restarting at 0 for
every sample. transformers derives a block-diagonal causal mask from such position ids (no
``attention_mask`` given), so attention never crosses a sample boundary; the first label of every
sample is ignored, so no token learns to predict the next sample. With ``pad_to`` the row is filled up
to a fixed length by a padding segment of its own (all labels ignored), which keeps shapes static for
compiled kernels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from loraops_trainer.data import IGNORE_INDEX, Sample


def pack(lengths: Sequence[int], budget: int, seed: int) -> list[list[int]]:
    """Sample indices grouped into bins of at most ``budget`` tokens (first-fit decreasing), shuffled."""
    too_long = [n for n in lengths if n > budget]
    if too_long:
        raise ValueError(f"{len(too_long)} sample(s) longer than the token budget {budget}")
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[index]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(index)
                room[b] -= n
                break
        else:
            bins.append([index])
            room.append(budget - n)
    random.Random(seed).shuffle(bins)
    return bins


class PackedDataset(torch.utils.data.Dataset):
    """Items are whole micro-batches (lists of samples); use with batch size 1."""

    def __init__(self, samples: Sequence[Sample], budget: int, seed: int) -> None:
        self.samples = list(samples)
        self.bins = pack([len(s) for s in self.samples], budget, seed)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[Sample]:
        return [self.samples[i] for i in self.bins[index]]

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.samples)


class PackedCollator:
    """Turns one bin (a list of samples) into a packed row; ``pad_to`` fixes the row length; ``boundaries`` adds
    the samples' flash-attention boundaries (``attention.boundaries``) for the varlen attention path.

    Kept rather than transformers' ``DataCollatorWithFlattening``, which gives the same keys: this one also ignores
    each sample's first label (no token learns to predict the next sample) and pads to a static shape."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None, boundaries: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.boundaries = boundaries

    def __call__(self, batch: list[list[Sample]]) -> dict[str, Any]:
        samples = [s for group in batch for s in group]
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for sample in samples:
            input_ids += sample.input_ids
            labels += [IGNORE_INDEX] + sample.labels[1:]
            position_ids += list(range(len(sample)))
        lengths = [len(sample) for sample in samples]
        if self.pad_to is not None and len(input_ids) < self.pad_to:
            fill = self.pad_to - len(input_ids)
            input_ids += [self.pad_token_id] * fill
            labels += [IGNORE_INDEX] * fill
            position_ids += list(range(fill))
            lengths.append(fill)
        row = {
            "input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([position_ids], dtype=torch.long),
        }
        if self.boundaries:
            from loraops_trainer.attention import boundaries

            row.update(boundaries(lengths))
        return row


def pad_batch(samples: Sequence[Sample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The same samples padded to the longest (right padding, attention mask): the baseline layout."""
    width = max(len(s) for s in samples)

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([padded(s.input_ids, pad_token_id) for s in samples]),
        "labels": torch.tensor([padded(s.labels, IGNORE_INDEX) for s in samples]),
        "attention_mask": torch.tensor([padded([1] * len(s), 0) for s in samples]),
    }
