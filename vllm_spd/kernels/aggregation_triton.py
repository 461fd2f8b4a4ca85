"""Triton kernel: fused cross-depth aggregation, every row of a cycle in one launch.

Decode is memory-bound: the cost is the bytes of ``W_a`` read.  So a program owns one
(type ``a``, tile of ``BLOCK_N`` output features) and applies that weight tile to *all*
rows of type ``a`` at once (a masked ``[BLOCK_R, BLOCK_K] x [BLOCK_K, BLOCK_N]`` dot):
each weight byte is read once per cycle however many requests share the type, and types
without rows read nothing.  The concatenation ``cat(h_0..h_a)`` is never built: the
reduction loops over anchors ``j <= a`` and reads ``anchors[j, slot(r), :]`` in place.
Deeper types (more bytes per program) get the lowest program ids so they start first
and the shallow ones fill in behind them.

CUDA-graph safe: no host syncs, no data-dependent allocation, grid depends on shapes only.
Limit: with more than ``MAX_BLOCK_R`` (64) rows, a weight tile is re-read for every
64-row chunk that contains its type.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .aggregation import PackedAggregation, _check

MAX_BLOCK_R = 64


@triton.jit
def _aggregate_kernel(
    anchors_ptr, stride_aj, stride_as, stride_ah,
    slots_ptr, types_ptr,
    w_ptr, bias_ptr,
    out_ptr, stride_or, stride_oh,
    num_rows, H, num_types,
    HAS_SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    a = num_types - 1 - tl.program_id(1)  # deepest type first
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < H
    row_len = (a + 1) * H  # row stride of W_a
    # Type a starts at H*H*a(a+1)/2 (aggregation.type_offset).  Computed here rather than
    # loaded from PackedAggregation.offsets: the compiler then knows its alignment from H
    # and keeps 16-byte vector loads.
    w_start = ((a * (a + 1)) // 2).to(tl.int64) * H * H
    w_rows = w_ptr + w_start + n.to(tl.int64)[:, None] * row_len
    for r0 in range(0, num_rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        take = tl.load(types_ptr + r, mask=r < num_rows, other=-1) == a
        if tl.max(take.to(tl.int32), axis=0) > 0:
            if HAS_SLOTS:
                src = tl.load(slots_ptr + r, mask=take, other=0).to(tl.int64)
            else:
                src = r.to(tl.int64)
            acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
            for j in range(0, a + 1):
                x_rows = anchors_ptr + j * stride_aj + src[:, None] * stride_as
                w_cols = w_rows + j * H
                for k0 in range(0, H, BLOCK_K):
                    k = k0 + tl.arange(0, BLOCK_K)
                    k_mask = k < H
                    x = tl.load(x_rows + k[None, :] * stride_ah,
                                mask=take[:, None] & k_mask[None, :], other=0.0)
                    w = tl.load(w_cols + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
                    acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + a * H + n, mask=n_mask, other=0.0)
                acc += bias.to(tl.float32)[None, :]
            tl.store(out_ptr + r[:, None] * stride_or + n[None, :] * stride_oh,
                     acc.to(out_ptr.dtype.element_ty), mask=take[:, None] & n_mask[None, :])


def _row_block(num_rows: int) -> int:
    # tl.dot needs >= 16 rows; beyond 64 the accumulator gets register-heavy.
    return max(16, min(triton.next_power_of_2(max(num_rows, 1)), MAX_BLOCK_R))


def aggregate_anchors_triton(
    anchors: torch.Tensor,
    row_types: torch.Tensor,
    packed: PackedAggregation,
    slots: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    *,
    block_n: int = 64,
    block_k: int = 128,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """Same contract as ``aggregate_anchors_reference``; one kernel launch.

    ``block_n``/``block_k`` default to GPU-friendly tiles; the tests pass larger ones so
    the CPU interpreter runs fewer (vectorised) steps.
    """
    _check(anchors, row_types, packed)
    if packed.weight.dtype != anchors.dtype:
        raise ValueError(f"anchors {anchors.dtype} and packed weights {packed.weight.dtype} must match")
    num_rows, h = row_types.shape[0], packed.hidden_size
    if out is None:
        out = anchors.new_empty(num_rows, h)
    if num_rows == 0:
        return out
    has_bias = packed.bias is not None
    grid = (triton.cdiv(h, block_n), packed.num_types)
    _aggregate_kernel[grid](
        anchors, anchors.stride(0), anchors.stride(1), anchors.stride(2),
        slots if slots is not None else row_types, row_types,
        packed.weight, packed.bias if has_bias else packed.weight,
        out, out.stride(0), out.stride(1),
        num_rows, h, packed.num_types,
        HAS_SLOTS=slots is not None, HAS_BIAS=has_bias,
        BLOCK_R=_row_block(num_rows), BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_PRECISION="ieee" if anchors.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
