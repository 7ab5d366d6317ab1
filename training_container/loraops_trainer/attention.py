"""Packed-sample attention on CUDA: variable-length FlashAttention over the samples of a packed row.

The sample boundaries travel with the batch: the collator (``PackedCollator(boundaries=True)``) adds transformers'
flash-attention keyword arguments ``cu_seq_lens_q``/``cu_seq_lens_k`` (cumulative sample lengths, int32) and
``max_length_q``/``max_length_k``; the model passes them down to every attention call, where this
``AttentionInterface`` function hands them to ``torch.nn.attention.varlen.varlen_attn`` (causal, one sample never
sees another). Nothing is kept between calls, so re-computation under activation checkpointing and concurrent models
see only their own batch. No mask is materialised and nothing is compiled. Without boundaries (generation with a KV
cache) it falls back to causal SDPA.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

NAME = "loraops_packed_varlen"


def boundaries(lengths: list[int]) -> dict[str, Any]:
    """The flash-attention keyword arguments of one packed row whose samples have ``lengths``."""
    cumulative = [0]
    for length in lengths:
        cumulative.append(cumulative[-1] + length)
    cu = torch.tensor(cumulative, dtype=torch.int32)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": longest, "max_length_k": longest}


@functools.cache
def _varlen_options() -> tuple[Any, dict[str, Any], bool]:
    """``varlen_attn``, its causal switch (``is_causal`` up to torch 2.11, a window later) and whether it takes
    grouped-query attention itself (``enable_gqa``), looked up once."""
    from torch.nn.attention.varlen import varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    return varlen_attn, causal, "enable_gqa" in parameters


def packed_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    grouped = key.shape[1] != query.shape[1]
    if cu_q is None or query.shape[2] != key.shape[2]:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=query.shape[2] > 1, scale=scaling, enable_gqa=grouped
        )
        return out.transpose(1, 2).contiguous(), None
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row per micro-batch")
    varlen_attn, causal, native_gqa = _varlen_options()
    options = dict(causal)
    if grouped and native_gqa:
        options["enable_gqa"] = True
    elif grouped:  # older torch: expand the shared key/value heads
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    out = varlen_attn(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu_q,
        cu_k,
        kwargs["max_length_q"],
        kwargs["max_length_k"],
        scale=scaling,
        **options,
    )
    return out.unsqueeze(0), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_varlen_attention)
