"""The elementwise pieces of a Llama-layout layer that sit between the matrix products of
:class:`~loraops_serving.graph_decode.GraphDecoder`'s step (each compiled into one fused kernel on CUDA), and the
power-of-two bucket sizes its graphs are captured for."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm (float32 statistics, the weight applied in the input's dtype)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """The residual sum ``x + delta`` and its RMSNorm."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class Pieces:
    """The elementwise pieces between the matrix products; on CUDA each one compiled into one fused kernel
    (a step of eager pieces launches ~40 small kernels a layer, most of a 7B step's time at small batches)."""

    def __init__(self, fuse: bool) -> None:
        if fuse:  # shapes (batch, prompt length) and strides (fused groups' views, with or without adapters) vary:
            # each variant compiles once; the default limit of 8 failed the step once it was reached
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, 64)
        wrap = (lambda f: torch.compile(f, dynamic=True, fullgraph=True)) if fuse else (lambda f: f)
        self.rms_norm, self.add_rms_norm = wrap(rms_norm), wrap(add_rms_norm)
        self.silu_mul, self.rope = wrap(silu_mul), wrap(apply_rotary_pos_emb)


def buckets(limit: int, first: int) -> tuple[int, ...]:
    sizes, size = [], first
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)
