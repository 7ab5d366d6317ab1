"""Many LoRA adapters in one batch: each adapted linear layer keeps every resident adapter's A and B stacked in one
tensor, gathers each row's pair by index and applies them with two batched matrix products (the BGMV idea of Punica and
S-LoRA), instead of peft's loop over adapters.

Row ``i`` of a batch uses slot ``rows[i]``; slot 0 is all zeros (the base model alone). Adapters of different
ranks share a layer: smaller ones are zero-padded to the largest rank, which leaves their product unchanged.

Three ways to apply them, one function: the torch gather below (``reference_delta``: the CPU path and the reference,
which copies each row's ``A`` and ``B``); on CUDA, one token per row (decode) goes to the Triton BGMV kernels
(``ops.bgmv``), which read each row's pair in place and skip slot-0 rows, and several tokens per row (prefill) to two
matrix products over all slots at once (``stacked_delta``), which copies no adapter per row and needs no host
synchronisation (the eager prefill; the graph decoder's packed prefill gives each token its own row, so BGMV). The graph
decoder goes further with :class:`FusedGroup`: layers that read one input share one matrix product with every slot's
``A`` stacked under their weights, and one grouped expand (``ops.sgmv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from loraops_serving.ops import add_lora_bgmv, triton_available
from loraops_serving.ops.sgmv import add_lora_grouped, add_lora_grouped_reference


@dataclass
class Routing:
    """Which slot each row of the running batch uses; set by the engine before each forward, read by the layers.
    One per engine (not module-level state), guarded by the engine's lock."""

    rows: torch.Tensor | None = None  # long [batch]
    active: bool = False  # some row uses an adapter
    #: Bumped whenever an adapted layer is created or its slot tensors are reallocated (``grow_rank``): anything
    #: that captured those tensors' addresses (a CUDA graph) must be captured again.
    version: int = 0


class MultiLoRALinear(nn.Module):
    """``base(x) + scale[s] * (x @ A[s].T) @ B[s].T`` for each row's slot ``s``."""

    def __init__(self, base: nn.Linear, slots: int, rank: int, routing: Routing) -> None:
        super().__init__()
        self.base, self.routing = base, routing
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.zeros(slots, rank, base.in_features, device=device, dtype=dtype), False)
        self.lora_b = nn.Parameter(torch.zeros(slots, base.out_features, rank, device=device, dtype=dtype), False)
        self.scale = nn.Parameter(torch.zeros(slots, device=device, dtype=dtype), False)
        routing.version += 1

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
        self.routing.version += 1

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
        if x.is_cuda and triton_available():
            if x.numel() == rows.numel() * x.shape[-1]:  # one token per row: decode
                flat = out.view(-1, out.shape[-1])
                add_lora_bgmv(flat, x.reshape(-1, x.shape[-1]), self.lora_a, self.lora_b, self.scale, rows)
                return out
            return out + stacked_delta(x, rows, self.lora_a, self.lora_b, self.scale)
        return out + reference_delta(x, rows, self.lora_a, self.lora_b, self.scale)


def reference_delta(x: torch.Tensor, rows: torch.Tensor, lora_a, lora_b, scale) -> torch.Tensor:
    """Each row's ``scale * (x @ A.T) @ B.T``, gathering every row's ``A`` and ``B`` (a copy per row)."""
    shape = x.shape
    x3 = x.reshape(shape[0], -1, shape[-1])  # [batch, tokens, in]
    a = lora_a[rows]  # [batch, r, in]   (gathered per row)
    b = lora_b[rows]  # [batch, out, r]
    delta = torch.bmm(torch.bmm(x3, a.transpose(1, 2)), b.transpose(1, 2))
    delta = delta * scale[rows].view(-1, 1, 1)
    return delta.reshape(*shape[:-1], -1)


def stacked_delta(x: torch.Tensor, rows: torch.Tensor, lora_a, lora_b, scale) -> torch.Tensor:
    """The same as :func:`reference_delta` for many tokens per row (prefill) in two matrix products and no host
    sync: every slot's shrink at once (``A`` of all slots is one ``[slots * r, in]`` matrix, a view), each row's
    products outside its own slot zeroed (and its scale applied), then one expand over the stacked ``B``. Costs
    ``slots`` times the shrink arithmetic (small beside the base layer's) and one copy of the whole ``B`` slot table
    into ``[out, slots * r]`` per call, never a copy per row."""
    shape = x.shape
    slots, rank, fan_in = lora_a.shape
    x3 = x.reshape(shape[0], -1, fan_in)
    xa = (x3.reshape(-1, fan_in) @ lora_a.reshape(slots * rank, fan_in).T).view(shape[0], -1, slots, rank)
    keep = nn.functional.one_hot(rows, slots).to(xa.dtype) * scale.to(xa.dtype)  # [batch, slots]
    xa = xa * keep[:, None, :, None]
    delta = xa.reshape(-1, slots * rank) @ lora_b.permute(1, 0, 2).reshape(-1, slots * rank).T
    return delta.reshape(*shape[:-1], -1)


class FusedGroup:
    """Linear layers that read the same input (``q/k/v``, ``gate/up``; or one layer alone) as one matrix product
    with, on adapted groups, every slot's ``A`` stacked under the weights, so that a single product gives the base
    outputs and every slot's shrink; then one grouped expand (``ops.sgmv``) adds each row's adapter delta. Two
    launches per group and step whatever the adapters mix, each slot's ``A`` and ``B`` read once.

    The members keep working as before: their weights, ``lora_a``, ``lora_b`` and ``scale`` become views into the
    group's tensors (no second copy of the base weights; an adapter loaded into a slot later lands in the group).
    Build again after :attr:`Routing.version` moves (a new adapted layer, a larger rank)."""

    def __init__(self, members: list[nn.Module]) -> None:
        linears = [m.base if isinstance(m, MultiLoRALinear) else m for m in members]
        adapted = [m for m in members if isinstance(m, MultiLoRALinear)]
        first = linears[0].weight
        fan_in = first.shape[1]
        if any(lin.in_features != fan_in for lin in linears):
            raise ValueError("a fused group's layers must read the same input")
        sizes = [lin.out_features for lin in linears]
        self.starts = [0]
        for size in sizes:
            self.starts.append(self.starts[-1] + size)
        total, count = self.starts[-1], len(members)
        self.slots = adapted[0].lora_a.shape[0] if adapted else 0
        self.rank = max((m.rank for m in adapted), default=0)
        for m in adapted:
            if m.lora_a.shape[0] != self.slots:
                raise ValueError("a fused group's adapted layers must have the same slots")
            m.grow_rank(self.rank)
        extra = self.slots * count * self.rank
        weight = torch.zeros(total + extra, fan_in, device=first.device, dtype=first.dtype)
        biased = any(lin.bias is not None for lin in linears)
        bias = torch.zeros(total + extra, device=first.device, dtype=first.dtype) if biased else None
        stacked_a = weight[total:].view(self.slots, count, self.rank, fan_in)
        self.lora_b = torch.zeros(self.slots, total, self.rank, device=first.device, dtype=first.dtype)
        self.scale = torch.zeros(count, self.slots, device=first.device, dtype=first.dtype)
        for j, (member, lin) in enumerate(zip(members, linears)):
            lo, hi = self.starts[j], self.starts[j + 1]
            weight[lo:hi] = lin.weight.data
            lin.weight = nn.Parameter(weight[lo:hi], requires_grad=False)
            if bias is not None:
                if lin.bias is not None:
                    bias[lo:hi] = lin.bias.data
                lin.bias = nn.Parameter(bias[lo:hi], requires_grad=False) if lin.bias is not None else None
            if isinstance(member, MultiLoRALinear):
                stacked_a[:, j] = member.lora_a.data
                self.lora_b[:, lo:hi] = member.lora_b.data
                self.scale[j] = member.scale.data
                member.lora_a = nn.Parameter(stacked_a[:, j], requires_grad=False)
                member.lora_b = nn.Parameter(self.lora_b[:, lo:hi], requires_grad=False)
                member.scale = nn.Parameter(self.scale[j], requires_grad=False)
        self.weight, self.bias, self.total = weight, bias, total

    def __call__(self, x: torch.Tensor, token_slots: torch.Tensor | None, kernel: bool) -> list[torch.Tensor]:
        """The members' outputs for ``x [..., K]``, each with its rows' adapter deltas when ``token_slots`` (one
        slot per token of ``x``) is given; ``kernel``: the Triton expand, else the torch reference."""
        if token_slots is None or not self.rank:
            bias = None if self.bias is None else self.bias[: self.total]
            out = nn.functional.linear(x, self.weight[: self.total], bias)
        else:
            both = nn.functional.linear(x, self.weight, self.bias)
            flat = both.view(-1, both.shape[-1])
            expand = add_lora_grouped if kernel else add_lora_grouped_reference
            expand(flat[:, : self.total], flat[:, self.total :], self.lora_b, self.scale, token_slots, self.starts)
            out = both[..., : self.total]
        return list(out.split([hi - lo for lo, hi in zip(self.starts, self.starts[1:])], dim=-1))


@dataclass
class AdapterWeights:
    """One PEFT adapter, read from its folder: per module name, ``A`` and ``B``, and its scale."""

    name: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float
    rank: int
    base_digest: str = ""
    target_names: set[str] = field(default_factory=set)


def attach_adapter(model: nn.Module, layers: dict[str, MultiLoRALinear], routing: Routing, adapter: AdapterWeights,
                   slot: int, slots: int) -> None:  # fmt: skip
    """Put ``adapter`` into ``slot`` of ``model``: each linear layer it adapts becomes a :class:`MultiLoRALinear`
    (recorded in ``layers``, with ``slots`` slots) the first time, and every adapted layer gets its ``A``/``B`` or
    zeros. Raises ``ValueError`` before changing anything when the adapter names a module that is no linear layer."""
    modules = dict(model.named_modules())
    for name in sorted(adapter.target_names - set(layers)):
        if not isinstance(modules.get(name), nn.Linear):
            raise ValueError(f"adapter {adapter.name} adapts {name}, which is no linear layer of the base")
    for name in sorted(adapter.target_names - set(layers)):
        parent, _, child = name.rpartition(".")
        layer = MultiLoRALinear(modules[name], slots, adapter.rank, routing)
        setattr(modules[parent] if parent else model, child, layer)
        layers[name] = layer
    for name, layer in layers.items():
        a, b = adapter.modules.get(name, (None, None))
        layer.put(slot, a, b, adapter.scale)
