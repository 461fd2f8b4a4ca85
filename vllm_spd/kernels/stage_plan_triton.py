"""Triton kernel: a cycle's stage plan (``stage_plan.plan_stages``) in a single launch.

The torch reference is about twenty small kernels per stage (the depth match, argmax,
gathers, the clamps and the block-table lookup of the KV slot, the copies into the
plan's buffers), each a few microseconds inside the cycle's graph. Here one program
per batch row reads its window once and writes every stage's token, position, attention
position, sequence length and KV slot. Same results as the torch reference
(``tests/test_cycle_kernel.py``). CUDA-graph safe: no host syncs, the grid depends on
the batch size only.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _plan_kernel(
    tok_ptr, depth_ptr, head_ptr, wlen_ptr, limit_ptr, live_ptr,
    table_ptr, table_stride, blocks, block_size,
    runs_ptr, out_tok_ptr, out_pos_ptr, positions_ptr, seq_lens_ptr, slots_ptr, out_stride,
    N: tl.constexpr, W: tl.constexpr, WP: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, WP)
    jm = j < W
    tok = tl.load(tok_ptr + b * W + j, mask=jm, other=0)
    depth = tl.load(depth_ptr + b * W + j, mask=jm, other=-1)
    head = tl.load(head_ptr + b)
    wlen = tl.load(wlen_ptr + b)
    limit = tl.load(limit_ptr + b)
    live = tl.load(live_ptr + b) != 0
    valid = jm & (j < wlen) & live
    for s in tl.static_range(N):
        hit = valid & (depth == s)
        first = tl.min(tl.where(hit, j, WP), axis=0)
        runs = first < WP
        slot = tl.where(runs, first, 0)
        token = tl.sum(tl.where(j == slot, tok, 0), axis=0)
        pos = head - slot
        ok = runs & (pos < limit) & (pos >= 0)
        p = tl.maximum(pos, 0)
        col = tl.minimum(p // block_size, blocks - 1)
        block = tl.load(table_ptr + b * table_stride + col).to(tl.int64)
        at = s * out_stride + b
        tl.store(runs_ptr + at, runs.to(tl.int8))
        tl.store(out_tok_ptr + at, token)
        tl.store(out_pos_ptr + at, pos)
        tl.store(positions_ptr + at, p)
        tl.store(seq_lens_ptr + at, tl.where(ok, p + 1, 1).to(tl.int32))
        tl.store(slots_ptr + at, tl.where(ok, block * block_size + p % block_size, -1))


def plan_stages_triton(st, live, block_table, block_size: int, out) -> None:
    """``stage_plan.plan_stages_reference`` in one launch."""
    import torch

    B, W = st.tok.shape
    stride = out.tok.stride(0)
    bufs = (out.runs, out.tok, out.pos, out.positions, out.seq_lens, out.slots)
    if any(t.stride(0) != stride or t.stride(1) != 1 for t in bufs) or not st.tok.is_contiguous() \
            or not st.depth.is_contiguous() or block_table.stride(1) != 1:
        raise ValueError("the stage plan's buffers must share one row stride, the window must be contiguous")
    _plan_kernel[(B,)](
        st.tok, st.depth, st.head, st.wlen, st.limit, live,
        block_table, block_table.stride(0), block_table.shape[1], block_size,
        out.runs.view(torch.int8), out.tok, out.pos, out.positions, out.seq_lens, out.slots, stride,
        N=W - 1, W=W, WP=triton.next_power_of_2(W),
    )
