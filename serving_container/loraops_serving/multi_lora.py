"""Many LoRA adapters in one batch: each adapted linear layer keeps every resident adapter's A and B stacked in
one tensor, gathers each row's pair by index and applies them with two batched matrix products (the BGMV idea of
Punica and S-LoRA), instead of peft's loop over adapters.

Row ``i`` of a batch uses slot ``rows[i]``; slot 0 is all zeros (the base model alone). Adapters of different
ranks share a layer: smaller ones are zero-padded to the largest rank, which leaves their product unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Routing:
    """Which slot each row of the running batch uses; set by the engine before each forward, read by the layers.
    One per engine (not module-level state), guarded by the engine's lock."""

    rows: torch.Tensor | None = None  # long [batch]
    active: bool = False  # some row uses an adapter


class MultiLoRALinear(nn.Module):
    """``base(x) + scale[s] * (x @ A[s].T) @ B[s].T`` for each row's slot ``s``."""

    def __init__(self, base: nn.Linear, slots: int, rank: int, routing: Routing) -> None:
        super().__init__()
        self.base, self.routing = base, routing
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.zeros(slots, rank, base.in_features, device=device, dtype=dtype), False)
        self.lora_b = nn.Parameter(torch.zeros(slots, base.out_features, rank, device=device, dtype=dtype), False)
        self.scale = nn.Parameter(torch.zeros(slots, device=device, dtype=dtype), False)

    @property
    def rank(self) -> int:
        return self.lora_a.shape[1]

    def grow_rank(self, rank: int) -> None:
        """Zero-pad every slot to ``rank`` (an adapter of a larger rank arrived)."""
        if rank <= self.rank:
            return
        pad = rank - self.rank
        self.lora_a = nn.Parameter(nn.functional.pad(self.lora_a.data, (0, 0, 0, pad)), False)
        self.lora_b = nn.Parameter(nn.functional.pad(self.lora_b.data, (0, pad)), False)

    def put(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, scale: float) -> None:
        """Load one adapter's ``A [r, in]`` and ``B [out, r]`` into ``slot`` (``None``: the adapter leaves this
        layer alone, so the slot holds zeros)."""
        self.lora_a.data[slot].zero_()
        self.lora_b.data[slot].zero_()
        self.scale.data[slot] = 0.0
        if a is None or b is None:
            return
        self.grow_rank(a.shape[0])
        self.lora_a.data[slot, : a.shape[0]] = a.to(self.lora_a.dtype)
        self.lora_b.data[slot, :, : b.shape[1]] = b.to(self.lora_b.dtype)
        self.scale.data[slot] = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.routing.active or self.routing.rows is None:
            return out
        rows = self.routing.rows
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])  # [batch, tokens, in]
        a = self.lora_a[rows]  # [batch, r, in]   (gathered per row)
        b = self.lora_b[rows]  # [batch, out, r]
        delta = torch.bmm(torch.bmm(x3, a.transpose(1, 2)), b.transpose(1, 2))
        delta = delta * self.scale[rows].view(-1, 1, 1)
        return out + delta.reshape(*shape[:-1], -1)


@dataclass
class AdapterWeights:
    """One PEFT adapter, read from its folder: per module name, ``A`` and ``B``, and its scale."""

    name: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float
    rank: int
    base_digest: str = ""
    target_names: set[str] = field(default_factory=set)
