"""BGMV shrink and expand (Punica's batched gather matrix-vector products, as in vLLM's ``lora/ops``): each row of a
decode batch reads its own adapter's ``A`` and ``B`` where they lie in the stacked slot tensors, so no per-row copy
of an adapter is made, and rows whose slot is 0 (the base alone) read nothing.

``shrink``: ``part[split, m, :] = A[slot[m], :, k-range(split)] @ x[m, k-range(split)]`` (fp32, split over the input
dimension so that a small batch still fills the GPU). ``expand``: ``out[m, :] += scale[slot[m]] * B[slot[m]] @
sum_split part[:, m, :]``, in place on the base layer's output. Both take every input as a device tensor and none
as a Python value that changes between steps, so they can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch

#: Programs wanted per launch: a little over the H200's 132 multiprocessors, twice.
_TARGET_PROGRAMS = 264
#: At most this many partial sums per row (the expand kernel loads them all in one tile).
_MAX_SPLITS = 64


@functools.cache
def triton_available() -> bool:
    """Triton imports and a CUDA device is there (the kernels' only home; the CPU keeps the torch path)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def shrink(
        x_ptr, a_ptr, slot_ptr, part_ptr, K, R, k_per_split,
        stride_xm, stride_as, stride_ar, stride_ps, stride_pm,
        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        m = tl.program_id(0)
        split = tl.program_id(1)
        slot = tl.load(slot_ptr + m)
        if slot > 0:
            offs_r = tl.arange(0, BLOCK_R)
            mask_r = offs_r < R
            acc = tl.zeros([BLOCK_R], dtype=tl.float32)
            k_start = split * k_per_split
            a_rows = a_ptr + slot.to(tl.int64) * stride_as + offs_r[:, None] * stride_ar
            for k0 in range(0, k_per_split, BLOCK_K):
                offs_k = k_start + k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < K
                x = tl.load(x_ptr + m * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
                a = tl.load(a_rows + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
                acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
            tl.store(part_ptr + split * stride_ps + m * stride_pm + offs_r, acc, mask=mask_r)

    @triton.jit
    def expand(
        part_ptr, b_ptr, slot_ptr, scale_ptr, out_ptr, N, R, splits,
        stride_ps, stride_pm, stride_bs, stride_bn, stride_om,
        BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        m = tl.program_id(0)
        nb = tl.program_id(1)
        slot = tl.load(slot_ptr + m)
        if slot > 0:
            offs_r = tl.arange(0, BLOCK_R)
            mask_r = offs_r < R
            offs_s = tl.arange(0, BLOCK_S)  # every split's partial in one load, not one dependent load each
            parts = part_ptr + offs_s[:, None] * stride_ps + m * stride_pm + offs_r[None, :]
            y = tl.sum(tl.load(parts, mask=(offs_s[:, None] < splits) & mask_r[None, :], other=0.0), axis=0)
            y = y * tl.load(scale_ptr + slot).to(tl.float32)
            offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            b_rows = b_ptr + slot.to(tl.int64) * stride_bs + offs_n[:, None] * stride_bn + offs_r[None, :]
            b = tl.load(b_rows, mask=mask_n[:, None] & mask_r[None, :], other=0.0)
            delta = tl.sum(b.to(tl.float32) * y[None, :], axis=1)
            out = out_ptr + m * stride_om + offs_n
            base = tl.load(out, mask=mask_n, other=0.0)
            tl.store(out, (base.to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=mask_n)

    return triton, shrink, expand


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def add_lora_bgmv(
    out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: torch.Tensor, slots
) -> torch.Tensor:
    """``out[m] += scale[s] * B[s] @ (A[s] @ x[m])`` with ``s = slots[m]``, in place; returns ``out``.

    ``x [M, K]``, ``out [M, N]`` (contiguous rows), ``lora_a [S, R, K]``, ``lora_b [S, N, R]``, ``scale [S]``,
    ``slots [M]`` (integers on the device; slot 0 is the base alone and is skipped).
    """
    triton, shrink, expand = _kernels()
    m, k = x.shape
    n, r = lora_b.shape[1], lora_b.shape[2]
    if out.shape != (m, n) or lora_a.shape[1:] != (r, k) or slots.shape != (m,):
        raise ValueError(f"bgmv shapes: out {tuple(out.shape)} x {tuple(x.shape)} A {tuple(lora_a.shape)} "
                         f"B {tuple(lora_b.shape)} slots {tuple(slots.shape)}")  # fmt: skip
    if x.stride(1) != 1:
        x = x.contiguous()
    if lora_a.stride(2) != 1 or lora_b.stride(2) != 1 or out.stride(1) != 1:
        raise ValueError("bgmv needs the last dimension of x, A, B and out contiguous")
    block_r = max(16, _next_pow2(r))
    block_k = max(16, min(128, 4096 // block_r))
    splits = max(1, min(triton.cdiv(_TARGET_PROGRAMS, m), triton.cdiv(k, block_k), _MAX_SPLITS))
    k_per_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)
    part = torch.empty((splits, m, r), device=x.device, dtype=torch.float32)
    shrink[(m, splits)](
        x, lora_a, slots, part, k, r, k_per_split,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), part.stride(0), part.stride(1),
        BLOCK_R=block_r, BLOCK_K=block_k,
    )  # fmt: skip
    block_n = max(16, min(128, 4096 // block_r))
    expand[(m, triton.cdiv(n, block_n))](
        part, lora_b, slots, scale, out, n, r, splits,
        part.stride(0), part.stride(1), lora_b.stride(0), lora_b.stride(1), out.stride(0),
        BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_S=max(2, _next_pow2(splits)),
    )  # fmt: skip
    return out
