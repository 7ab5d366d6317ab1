"""Grouped LoRA expand (SGMV-style: rows grouped by adapter slot, each slot's ``B`` read once per step however many
rows use it) over a fused projection group.

A group is one or more linear layers that read the same input (``q/k/v``, or ``gate/up``): their weights are one
``[N, K]`` matrix (``N`` the sum of the members' outputs, member ``j`` owning columns ``starts[j] ..
starts[j+1]``), and below it lie every slot's ``A`` of every member, ``[slots * members * R, K]``, so that one
matrix product gives both the base output and every slot's shrink ``xa`` (the shrink costs no launch of its own).
This kernel then adds, for each row ``m`` of slot ``s = slots[m] > 0``:

    out[m, starts[j]:starts[j+1]] += scale[j, s] * xa[m, (s * members + j) * R : ... + R] @ B[s, starts[j]:..., :].T

Programs are ``(slot, column block, row block)``: a program whose row block holds no row of its slot returns at
once, so an adapter nobody uses costs a few instructions and every slot's ``B`` tile is read by one program only.
All inputs are device tensors with no value that changes between steps: the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch

MAX_MEMBERS = 3


def _check(out, xa, lora_b, scale, slots, starts) -> tuple[int, int, int, int]:
    m, n = out.shape
    count, total, rank = lora_b.shape
    members = len(starts) - 1
    if not 1 <= members <= MAX_MEMBERS or starts[0] != 0 or starts[-1] != n or list(starts) != sorted(starts):
        raise ValueError(f"group starts {list(starts)} must rise from 0 to {n} over 1..{MAX_MEMBERS} members")
    if total != n or xa.shape != (m, count * members * rank) or scale.shape != (members, count) or slots.shape != (m,):
        raise ValueError(
            f"grouped expand shapes: out {tuple(out.shape)} xa {tuple(xa.shape)} B {tuple(lora_b.shape)} "
            f"scale {tuple(scale.shape)} slots {tuple(slots.shape)}"
        )
    return m, n, rank, members


def add_lora_grouped_reference(out, xa, lora_b, scale, slots, starts) -> torch.Tensor:
    """The torch version of :func:`add_lora_grouped` (the CPU path, and the GPU tests' reference): gathers each
    row's ``xa`` and ``B`` (a copy per row). In place; returns ``out``."""
    m, _, rank, members = _check(out, xa, lora_b, scale, slots, starts)
    parts = xa.view(m, -1, members, rank)[torch.arange(m, device=xa.device), slots]  # [M, members, R]
    for j in range(members):
        lo, hi = starts[j], starts[j + 1]
        y = parts[:, j] * scale[j, slots].to(parts.dtype)[:, None]
        delta = torch.bmm(lora_b[slots, lo:hi], y[:, :, None])[:, :, 0]  # [M, N_j]
        out[:, lo:hi] += torch.where((slots > 0)[:, None], delta, torch.zeros_like(delta)).to(out.dtype)
    return out


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def grouped_expand(
        out_ptr, xa_ptr, b_ptr, scale_ptr, slot_ptr, M, N, R, end0, end1,
        stride_om, stride_xm, stride_bs, stride_bn, stride_ss,
        MEMBERS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
        IEEE: tl.constexpr,
    ):  # fmt: skip
        s = tl.program_id(0) + 1  # slot 0 is the base alone
        n0 = tl.program_id(1) * BLOCK_N
        offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        mine = (tl.load(slot_ptr + offs_m, mask=mask_m, other=0) == s) & mask_m
        if tl.sum(mine.to(tl.int32), axis=0) > 0:
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            offs_r = tl.arange(0, BLOCK_R)
            mask_r = offs_r < R
            b = tl.load(
                b_ptr + s.to(tl.int64) * stride_bs + offs_n[None, :] * stride_bn + offs_r[:, None],
                mask=mask_r[:, None] & mask_n[None, :],
                other=0.0,
            )  # [R, N block]: this slot's B tile, read once for all its rows
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for j in tl.static_range(MEMBERS):
                lo = 0 if j == 0 else (end0 if j == 1 else end1)
                hi = end0 if j == 0 else (end1 if j == 1 else N)
                if (n0 < hi) & (n0 + BLOCK_N > lo):  # the column block overlaps member j
                    xa = tl.load(
                        xa_ptr + offs_m[:, None] * stride_xm + (s * MEMBERS + j) * R + offs_r[None, :],
                        mask=mine[:, None] & mask_r[None, :],
                        other=0.0,
                    )
                    cols = (offs_n >= lo) & (offs_n < hi)
                    part = tl.dot(xa, tl.where(cols[None, :], b, 0.0).to(xa.dtype), input_precision=IEEE)
                    acc += part * tl.load(scale_ptr + j * stride_ss + s).to(tl.float32)
            out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
            keep = mine[:, None] & mask_n[None, :]
            base = tl.load(out, mask=keep, other=0.0)
            tl.store(out, (base.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=keep)

    return triton, grouped_expand


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


#: Column block and warps per program (``None``: chosen from the rank); measured on an H200 by bench/sgmv_blocks.py.
BLOCK_N: int | None = None
NUM_WARPS = 4


def add_lora_grouped(out, xa, lora_b, scale, slots, starts, block_n: int | None = None, num_warps: int | None = None):
    """In place on ``out [M, N]`` (rows of any stride, columns contiguous): each row's adapter delta from its
    shrink ``xa [M, slots * members * R]`` and ``lora_b [slots, N, R]``, ``scale [members, slots]``, ``slots [M]``
    (device integers; slot-0 rows untouched), members' columns ``starts``. Returns ``out``."""
    m, n, rank, members = _check(out, xa, lora_b, scale, slots, starts)
    if out.stride(1) != 1 or xa.stride(1) != 1 or lora_b.stride(2) != 1:
        raise ValueError("grouped expand needs the last dimension of out, xa and B contiguous")
    slots = slots.contiguous()  # the kernel reads one slot per row at consecutive addresses (an expanded view has none)
    triton, kernel = _kernel()
    block_m = min(64, max(16, _pow2(m)))
    block_r = max(16, _pow2(rank))
    block_n = block_n or BLOCK_N or max(16, min(128, 8192 // block_r))
    ends = list(starts[1:-1]) + [n] * (MAX_MEMBERS - members)
    grid = (lora_b.shape[0] - 1, triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    if grid[0] < 1:
        return out
    kernel[grid](
        out, xa, lora_b, scale, slots, m, n, rank, ends[0], ends[1],
        out.stride(0), xa.stride(0), lora_b.stride(0), lora_b.stride(1), scale.stride(0),
        MEMBERS=members, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r,
        IEEE="ieee" if out.dtype == torch.float32 else "tf32", num_warps=num_warps or NUM_WARPS,
    )  # fmt: skip
    return out
