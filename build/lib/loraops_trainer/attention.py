"""Packed-sample attention on CUDA: variable-length FlashAttention over the samples of a packed row.

A packed row holds several samples whose ``position_ids`` restart at 0. A forward pre-hook on the
decoder turns them, once per forward, into cumulative sequence lengths; every layer then runs
``torch.nn.attention.varlen.varlen_attn`` (causal, one sample never sees another), and the
re-computation under gradient checkpointing reuses them. No mask is materialised and nothing is
compiled. Without ``position_ids`` (generation with a KV cache) it falls back to causal SDPA.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

NAME = "loraops_packed_varlen"
_state: dict[str, Any] = {"segments": None}


def cumulative_lengths(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens as int32 of shape [n+1], longest sample) of one packed row."""
    if position_ids.shape[0] != 1:
        raise ValueError("packed attention expects one packed row per micro-batch")
    row = position_ids[0]
    starts = torch.nonzero(row == 0).flatten()
    ends = torch.cat([starts[1:], torch.tensor([row.numel()], device=row.device)])
    cu = torch.cat([starts, ends[-1:]]).to(torch.int32)
    return cu, int((ends - starts).max())


def _set_segments(module, args, kwargs):
    position_ids = kwargs.get("position_ids")
    past = kwargs.get("cache", kwargs.get("past_key_values"))
    has_cache = past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0
    _state["segments"] = None if position_ids is None or has_cache else cumulative_lengths(position_ids)


@functools.cache
def _causal_varlen() -> tuple[Any, dict[str, Any]]:
    """``varlen_attn`` and its causal switch, looked up once (``is_causal`` up to torch 2.11, a window later)."""
    from torch.nn.attention.varlen import varlen_attn

    causal = (
        {"is_causal": True} if "is_causal" in inspect.signature(varlen_attn).parameters else {"window_size": (-1, 0)}
    )
    return varlen_attn, causal


def _varlen(query, key, value, cu, longest, scale):
    varlen_attn, causal = _causal_varlen()
    return varlen_attn(query, key, value, cu, cu, longest, longest, scale=scale, **causal)


def packed_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    segments = _state["segments"]
    if segments is None or query.shape[2] != key.shape[2]:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=query.shape[2] > 1, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
        )
        return out.transpose(1, 2).contiguous(), None
    if key.shape[1] != query.shape[1]:  # grouped-query attention: expand the shared heads
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    cu, longest = segments
    out = _varlen(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu, longest, scaling)
    return out.unsqueeze(0), None


def install(model: Any) -> None:
    """Hook ``model``'s decoder so each forward derives the sample boundaries once."""
    model.get_decoder().register_forward_pre_hook(_set_segments, with_kwargs=True)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_varlen_attention)
