"""Triton kernels: fused RMSNorm + draft-vocabulary matmul (+ greedy argmax).

The vocabulary is split across programs (``BLOCK_V`` draft tokens each, all rows of a
row block together so each ``lm_head`` byte is read once).  Every program recomputes
the rows' RMS itself: ``hidden`` is a few KB and cache-resident, which is cheaper than
a separate norm launch and keeps the normalised rows out of memory.

* Greedy: each program keeps only its per-row (max, argmax) -> workspace ``[R, NB]``;
  a second tiny kernel reduces the NB blocks per row and maps the draft index to the
  full-vocabulary id.  The ``[R, K]`` logits are never written.  Ties: ``tl.argmax``
  breaks left inside a block and the block reduction picks the lowest block, so the
  lowest draft index wins, as in ``torch.argmax``.  (NaN logits are not handled.)
* Sampling: the same kernel stores the fp32 logits ``[R, K]`` for
  ``vllm_spd.core.verify.draft_proposal`` (warping and sampling, in torch).

CUDA-graph safe (greedy and logits): no host syncs, workspace shapes depend on R, K only.
Limit: beyond 64 rows, ``lm_head`` is re-read per 64-row block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_R = 64


@triton.jit
def _draft_head_kernel(
    hidden_ptr, stride_hr, stride_hh,
    norm_w_ptr, lm_ptr, stride_lk, stride_lh,
    best_val_ptr, best_idx_ptr,  # greedy workspace [R, NB]
    logits_ptr, stride_or,  # logits path: [R, K] fp32
    num_rows, H, K, eps,
    WRITE_LOGITS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_v = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < num_rows
    v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_mask = v < K
    x_rows = hidden_ptr + r.to(tl.int64)[:, None] * stride_hr
    w_rows = lm_ptr + v.to(tl.int64)[:, None] * stride_lk

    sum_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + k[None, :] * stride_hh, mask=r_mask[:, None] & (k < H)[None, :], other=0.0)
        x = x.to(tl.float32)
        sum_sq += tl.sum(x * x, axis=1)
    inv_rms = 1.0 / tl.sqrt(sum_sq / H + eps)

    acc = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < H
        x = tl.load(x_rows + k[None, :] * stride_hh, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        g = tl.load(norm_w_ptr + k, mask=k_mask, other=0.0)
        # Round like the reference: normalised value -> input dtype, then times the weight.
        y = (x.to(tl.float32) * inv_rms[:, None]).to(x.dtype) * g[None, :]
        w = tl.load(w_rows + k[None, :] * stride_lh, mask=v_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(y, tl.trans(w), acc, input_precision=DOT_PRECISION)

    if WRITE_LOGITS:
        tl.store(logits_ptr + r.to(tl.int64)[:, None] * stride_or + v[None, :], acc,
                 mask=r_mask[:, None] & v_mask[None, :])
    else:
        acc = tl.where(v_mask[None, :], acc, float("-inf"))
        best = tl.max(acc, axis=1)
        arg = tl.argmax(acc, axis=1, tie_break_left=True)
        num_blocks = tl.num_programs(0)
        tl.store(best_val_ptr + r * num_blocks + pid_v, best, mask=r_mask)
        tl.store(best_idx_ptr + r * num_blocks + pid_v, pid_v * BLOCK_V + arg, mask=r_mask)


@triton.jit
def _argmax_blocks_kernel(best_val_ptr, best_idx_ptr, token_ids_ptr, out_ptr, num_blocks,
                          BLOCK_B: tl.constexpr):
    row = tl.program_id(0)
    b = tl.arange(0, BLOCK_B)
    vals = tl.load(best_val_ptr + row * num_blocks + b, mask=b < num_blocks, other=float("-inf"))
    best_block = tl.argmax(vals, axis=0, tie_break_left=True)
    draft_idx = tl.load(best_idx_ptr + row * num_blocks + best_block)
    tl.store(out_ptr + row, tl.load(token_ids_ptr + draft_idx).to(tl.int64))


def _check(hidden, norm_weight, lm_head):
    if hidden.dim() != 2 or lm_head.dim() != 2 or hidden.shape[1] != lm_head.shape[1]:
        raise ValueError(f"hidden [R, H] and lm_head [K, H] expected, got {tuple(hidden.shape)}, {tuple(lm_head.shape)}")
    if not (hidden.dtype == norm_weight.dtype == lm_head.dtype):
        raise ValueError("hidden, norm_weight and lm_head must share one dtype")


def _launch(hidden, norm_weight, eps, lm_head, *, write_logits, block_v, block_k, num_warps, num_stages):
    _check(hidden, norm_weight, lm_head)
    num_rows, h = hidden.shape
    k = lm_head.shape[0]
    block_r = max(16, min(triton.next_power_of_2(max(num_rows, 1)), MAX_BLOCK_R))
    num_blocks = triton.cdiv(k, block_v)
    if write_logits:
        logits = torch.empty(num_rows, k, dtype=torch.float32, device=hidden.device)
        best_val = best_idx = logits  # unused
    else:
        logits = best_val = torch.empty(num_rows, num_blocks, dtype=torch.float32, device=hidden.device)
        best_idx = torch.empty(num_rows, num_blocks, dtype=torch.int32, device=hidden.device)
    grid = (num_blocks, triton.cdiv(num_rows, block_r))
    _draft_head_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1),
        norm_weight, lm_head, lm_head.stride(0), lm_head.stride(1),
        best_val, best_idx, logits, logits.stride(0),
        num_rows, h, k, eps,
        WRITE_LOGITS=write_logits, BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_K=block_k,
        DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return logits, best_val, best_idx, num_blocks


def draft_greedy_triton(hidden, norm_weight, eps, lm_head, draft_token_ids, *,
                        block_v=128, block_k=128, num_warps=8, num_stages=3) -> torch.Tensor:
    """Greedy draft ids ``[R]`` int64 (full vocabulary); two launches, no logits in memory."""
    num_rows = hidden.shape[0]
    out = torch.empty(num_rows, dtype=torch.int64, device=hidden.device)
    if num_rows == 0:
        return out
    _, best_val, best_idx, num_blocks = _launch(
        hidden, norm_weight, eps, lm_head, write_logits=False,
        block_v=block_v, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
    _argmax_blocks_kernel[(num_rows,)](best_val, best_idx, draft_token_ids, out, num_blocks,
                                       BLOCK_B=triton.next_power_of_2(num_blocks))
    return out


def draft_logits_triton(hidden, norm_weight, eps, lm_head, *,
                        block_v=128, block_k=128, num_warps=8, num_stages=3) -> torch.Tensor:
    """Fused RMSNorm + draft-vocabulary logits ``[R, K]`` fp32 (the sampling path)."""
    if hidden.shape[0] == 0:
        return torch.empty(0, lm_head.shape[0], dtype=torch.float32, device=hidden.device)
    logits, *_ = _launch(hidden, norm_weight, eps, lm_head, write_logits=True,
                         block_v=block_v, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
    return logits
