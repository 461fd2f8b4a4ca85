"""Triton kernel: one cycle's bookkeeping (``CycleState.advance``) in a single launch.

The torch function is about forty small kernels per cycle (gathers, wheres, a scatter,
the copies back), each a few microseconds of GPU time inside the cycle's graph. Here
one program per batch row does it all in registers: the window's depths advance, the
draft enters (the window shifts one slot older), the oldest token completes and judges
the one after it, a flush resets the window to the committed token, the stop gate admits
the commit and the ring records it. Same inputs, same results as the torch function,
which stays the CPU path and the reference (``tests/test_cycle_kernel.py``).

Greedy verdicts only (``target`` a tensor); a verdict function (sampled rows) takes the
torch path. CUDA-graph safe: no host syncs, the grid depends on the batch size only.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _advance_kernel(
    tok_ptr, depth_ptr, head_ptr, wlen_ptr, epoch_ptr, committed_ptr, pending_ptr,
    stop_ptr, num_output_ptr, max_tokens_ptr, stopped_ptr, limit_ptr,
    ring_ptr, ring_len_ptr, cycles_ptr, verified_ptr, accepted_ptr,
    live_ptr, draft_ptr, target_ptr,
    N: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, S: tl.constexpr, K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, WP)
    jm = j < W
    row = tok_ptr + b * W
    drow = depth_ptr + b * W
    live = tl.load(live_ptr + b) != 0
    head = tl.load(head_ptr + b)
    wlen = tl.load(wlen_ptr + b)
    # every load first: the stores below overwrite the same slots
    tok = tl.load(row + j, mask=jm, other=0)
    depth = tl.load(drow + j, mask=jm, other=0)
    prev_tok = tl.load(row + j - 1, mask=jm & (j >= 1), other=0)
    prev_depth = tl.load(drow + j - 1, mask=jm & (j >= 1), other=0)
    stop_ids = tl.load(stop_ptr + b * S + tl.arange(0, S))
    draft = tl.load(draft_ptr + b)
    target = tl.load(target_ptr + b)
    limit = tl.load(limit_ptr + b)
    stopped = tl.load(stopped_ptr + b)
    ring_len = tl.load(ring_len_ptr + b)
    num_output = tl.load(num_output_ptr + b)
    max_tokens = tl.load(max_tokens_ptr + b)

    # 1. every token with depth < n went one stage deeper
    depth = depth + ((j < wlen) & (depth < N) & live).to(tl.int64)
    prev_depth = prev_depth + ((j >= 1) & (j - 1 < wlen) & (prev_depth < N) & live).to(tl.int64)
    # 2. the draft enters at depth 0
    want = live & (head + 1 < limit)
    tok = tl.where(want, tl.where(j == 0, draft, prev_tok), tok)
    depth = tl.where(want, tl.where(j == 0, 0, prev_depth), depth)
    head = head + want.to(tl.int64)
    wlen = wlen + want.to(tl.int64)
    # 3. the oldest token completes at depth n and judges the one after it
    oldest = tl.maximum(wlen - 1, 0)
    oldest_depth = tl.sum(tl.where(j == oldest, depth, 0), axis=0)
    done = live & (wlen >= 1) & (oldest_depth >= N)
    done_pos = head - oldest
    has_cand = wlen >= 2
    cand = tl.sum(tl.where(j == tl.maximum(oldest - 1, 0), tok, 0), axis=0)
    ok = done & has_cand & (cand == target)
    flush = done & (ok == 0)
    tok = tl.where(flush & (j == 0), target, tok)
    depth = tl.where(flush, 0, depth)
    wlen = tl.where(flush, 1, wlen - ok.to(tl.int64))
    head = tl.where(flush, done_pos + 1, head)
    # the gate: vLLM's check_stop on the committed token; the ring records it
    admit = done & (stopped == 0)
    tl.store(ring_ptr + b * K + tl.minimum(ring_len, K - 1), target, mask=admit)
    num_output = num_output + admit.to(tl.int64)
    hit = tl.sum((stop_ids == target).to(tl.int32), axis=0) > 0
    stop = admit & (hit | (num_output >= max_tokens))

    tl.store(row + j, tok, mask=jm)
    tl.store(drow + j, depth, mask=jm)
    tl.store(head_ptr + b, head)
    tl.store(wlen_ptr + b, wlen)
    tl.store(epoch_ptr + b, tl.load(epoch_ptr + b) + flush.to(tl.int64))
    committed = tl.load(committed_ptr + b)
    tl.store(committed_ptr + b, tl.where(done, done_pos + 2, committed))
    tl.store(ring_len_ptr + b, ring_len + admit.to(tl.int64))
    tl.store(num_output_ptr + b, num_output)
    tl.store(stopped_ptr + b, tl.where(stop, 1, stopped))
    pending = tl.load(pending_ptr + b)
    tl.store(pending_ptr + b, tl.where(live, done.to(tl.int64), pending))
    tl.store(cycles_ptr + b, tl.load(cycles_ptr + b) + live.to(tl.int64))
    tl.store(verified_ptr + b, tl.load(verified_ptr + b) + (done & has_cand).to(tl.int64))
    tl.store(accepted_ptr + b, tl.load(accepted_ptr + b) + ok.to(tl.int64))


def advance_triton(st, live, draft, target) -> None:
    """``st.advance(live, draft, target)`` for a tensor ``target``, in one launch."""
    P, W = st.tok.shape
    S, K = st.stop_ids.shape[1], st.ring.shape[1]
    if S & (S - 1):
        raise ValueError(f"stop slots must be a power of two, got {S}")
    _advance_kernel[(P,)](
        st.tok, st.depth, st.head, st.wlen, st.epoch, st.committed_len, st.pending,
        st.stop_ids, st.num_output, st.max_tokens, st.stopped, st.limit,
        st.ring, st.ring_len, st.cycles, st.verified, st.accepted,
        live, draft, target,
        N=W - 1, W=W, WP=triton.next_power_of_2(W), S=S, K=K,
    )
