"""The structural attention mask of the training layout, and a brute-force twin.

Training layout ("blocks"): for every aggregation type ``a`` in ``block_types`` and every
position ``t`` of a sequence of length S there is one row ``(a, t)``; block ``b`` holds
the rows of type ``block_types[b]``, so row ``(block b, t)`` has index ``b*S + t``.

A row of type ``a`` stands for a token seen at one *representative depth* ``d(a)``
(default: the smallest depth that maps to ``a``; depth 0 for the type that drafts).
What the draft module sees at inference when it drafts the token after the newest
token N, with ``fill`` tokens in flight (1..n; n = full window):

- the in-flight tokens ``N, N-1, ..., N-fill+1`` at depths ``0, 1, ..., fill-1``;
- every older token (the just-completed pending token included) at full depth n.

Query row ``(a_q, t)`` is the token t at depth ``d = d(a_q)``, i.e. N = t + d. It may
attend key row ``(a_k, T)`` iff ``T <= t`` and, with ``delta = t - T``::

    a_k == depth_to_type[d + delta]    if delta < fill - d   (T is still in flight)
    a_k == depth_to_type[n]            otherwise             (T is complete: full depth)

This is the reference's staircase with its bug B5 fixed (the reference used the
cut-off ``delta >= fill`` for every query; a non-newest row's older neighbours outside
the window are at full depth, hence ``fill - d``). ``fill == n`` gives the saturated
staircase ``depth_to_type[min(n, d + delta)]``.

``simulated_mask`` builds the same matrix by running the request state machine of
``vllm_spd.core.pipeline`` and listing the rows the runner hands the draft module.
"""

from __future__ import annotations

import random

import torch

from vllm_spd.core.layout import StageLayout
from vllm_spd.core.pipeline import RequestPipeline


def used_types(layout: StageLayout) -> list[int]:
    """Types some depth maps to, ascending (an unreachable type never has a row)."""
    return sorted(set(layout.depth_to_type))


def drafting_type(layout: StageLayout) -> int:
    """The type of the newest token (depth 0): the rows whose outputs are the drafts."""
    return layout.depth_to_type[0]


def representative_depths(layout: StageLayout, rng: random.Random | None = None) -> dict[int, int]:
    """Depth each used type's rows stand for during one training step.

    Without ``rng``: the smallest depth of each type (the reference's choice). With
    ``rng``: a uniformly drawn depth among those mapping to the type, so that when
    several depths share a type (more stages than anchors) every depth's view of its
    neighbours is trained; the drafting type always stands for depth 0.
    """
    depths: dict[int, list[int]] = {}
    for d, a in enumerate(layout.depth_to_type):
        depths.setdefault(a, []).append(d)
    out = {a: (ds[0] if rng is None else rng.choice(ds)) for a, ds in depths.items()}
    out[drafting_type(layout)] = 0
    return out


def _check(layout: StageLayout, fill: int, block_types, rep_depths):
    n = layout.num_stages
    if not 1 <= fill <= n:
        raise ValueError(f"fill must be in [1, {n}], got {fill}")
    block_types = list(block_types if block_types is not None else used_types(layout))
    rep = dict(rep_depths if rep_depths is not None else representative_depths(layout))
    for a in block_types:
        if a not in rep:
            raise ValueError(f"type {a} has no representative depth (no depth maps to it)")
        if layout.depth_to_type[rep[a]] != a:
            raise ValueError(f"depth {rep[a]} maps to type {layout.depth_to_type[rep[a]]}, not {a}")
    return block_types, rep


def required_types(layout: StageLayout, seq_len: int, fill: int, block_types=None,
                   rep_depths=None, device=None) -> torch.Tensor:
    """``[len(block_types), seq_len]`` long: the key type a query row of block ``b`` may
    read at distance ``delta = t - T`` (``0 <= delta < seq_len``). The structural mask
    depends on a row pair only through its blocks and its distance, so this table and
    the key blocks' types give it whole (``structural_mask``, and the block-sparse
    mask of ``vllm_spd.train.attention``)."""
    block_types, rep = _check(layout, fill, block_types, rep_depths)
    n = layout.num_stages
    dtt = torch.tensor(layout.depth_to_type, device=device)
    delta = torch.arange(seq_len, device=device)
    rows = []
    for a_q in block_types:
        d = rep[a_q]
        depth = torch.where(delta < fill - d, d + delta, torch.full_like(delta, n)).clamp(0, n)
        rows.append(dtt[depth])
    return torch.stack(rows)


def structural_mask(layout: StageLayout, seq_len: int, fill: int, block_types=None,
                    rep_depths=None, device=None) -> torch.Tensor:
    """Boolean ``[R, R]`` (R = len(block_types) * seq_len), True = may attend."""
    block_types, rep = _check(layout, fill, block_types, rep_depths)
    S = seq_len
    required = required_types(layout, S, fill, block_types, rep, device)   # [blocks, S(delta)]
    delta = torch.arange(S, device=device)[:, None] - torch.arange(S, device=device)[None, :]
    causal = delta >= 0
    key_types = torch.tensor(block_types, device=device)
    rows = []
    for b in range(len(block_types)):
        req = required[b][delta.clamp(min=0)]                           # [S(t), S(T)]
        row = causal[:, None, :] & (key_types[None, :, None] == req[:, None, :])
        rows.append(row.reshape(S, len(block_types) * S))
    return torch.cat(rows, 0)


# ---- brute force: simulate the inference pipeline -------------------------------------

def _rows_at_draft(layout: StageLayout, newest: int, fill: int, path: str) -> list[tuple[int, int]]:
    """``(pos, depth)`` of every draft-module row (cached ones included) a causal
    attention reads when the draft for ``newest + 1`` is made with ``fill`` tokens in
    flight, found by running the cycle state machine the way the runner does:

    - ``path="prompt"``: a prompt fills the cache at full depth, the first token
      enters, every draft is accepted (``fill == n`` runs on into the steady state);
    - ``path="reject"``: steady state, then a rejection ``fill`` positions back (the
      window refills from one token; ``fill == n`` is the cycle before it saturates).

    The caller offsets positions so that the simulated prompt is never empty.
    """
    n = layout.num_stages
    if path == "prompt":
        first = newest - fill + 1 - (2 * n if fill == n else 0)
        reject_at = None
    elif path == "reject":
        first = newest - fill - 2 * n
        reject_at = newest - fill          # the completing token whose successor is rejected
    else:
        raise ValueError(path)
    assert first >= 1, "caller must offset positions"
    cache = {p: n for p in range(first)}   # prefill writes every prompt row at full depth
    pipe = RequestPipeline(n, token=0, pos=first)
    pending = None
    for _ in range(10 * n + 10):
        rows = ([(pending, n)] if pending is not None else [])
        rows += [(e.pos, e.depth) for e in reversed(pipe.window) if e.pos != pending]
        if pipe.newest.pos == newest and reject_at is None:
            assert len(pipe.window) == fill, (len(pipe.window), fill)
            return sorted(cache.items()) + rows
        # The forward wrote every row; the pending row stays as the cache's next entry,
        # the in-flight rows are rewritten by later forwards.
        if pending is not None:
            cache[pending] = n
            pending = None
        pipe.advance(draft=1)
        done = pipe.completing()
        if done is not None:
            cand = pipe.candidate()
            if done.pos == reject_at:
                pipe.resolve(accepted=False, token=2)
                reject_at = None
            else:
                pipe.resolve(accepted=True, token=cand.token)
            pending = done.pos
    raise AssertionError("simulation did not reach the requested state")


def simulated_mask(layout: StageLayout, seq_len: int, fill: int, block_types=None,
                   rep_depths=None, path: str = "prompt") -> torch.Tensor:
    """Brute-force ``structural_mask``: for each query row (type a, pos t) standing for
    depth d, simulate the pipeline up to the moment the newest token is t + d and mark
    every (type, pos) row that the row at position t reads."""
    block_types, rep = _check(layout, fill, block_types, rep_depths)
    S, n = seq_len, layout.num_stages
    offset = 3 * n + 2
    col = {a: b for b, a in enumerate(block_types)}
    out = torch.zeros(len(block_types) * S, len(block_types) * S, dtype=torch.bool)
    for b, a_q in enumerate(block_types):
        d = rep[a_q]
        for t in range(S):
            rows = _rows_at_draft(layout, t + d + offset, fill, path)
            for pos, depth in rows:
                T = pos - offset
                if T < 0 or T > t:
                    continue
                a_k = layout.depth_to_type[depth]
                if a_k in col:
                    out[b * S + t, col[a_k] * S + T] = True
    return out


# ---- padding and the additive 4D mask -------------------------------------------------

def position_ids(valid: torch.Tensor) -> torch.Tensor:
    """Absolute positions of a ``[B, S]`` validity mask (valid tokens contiguous: left or
    right padding); padding gets position 0."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def attention_bias(structural: torch.Tensor, valid: torch.Tensor, num_blocks: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``[B, 1, R, R]`` mask: 0 where allowed, ``finfo(dtype).min`` elsewhere.

    Valid tokens of a row must be contiguous (left or right padding): the structural
    mask counts distances in index space. Padded keys are never visible; a padded query
    row sees only itself (so no row is fully masked).
    """
    B, S = valid.shape
    R = num_blocks * S
    if structural.shape != (R, R):
        raise ValueError(f"structural mask {tuple(structural.shape)} does not fit {num_blocks} blocks of {S}")
    v = valid.bool().repeat(1, num_blocks)                       # [B, R]
    allowed = structural[None] & v[:, None, :] & v[:, :, None]
    eye = torch.eye(R, dtype=torch.bool, device=structural.device)
    allowed = allowed | (eye[None] & ~v[:, :, None])
    bias = torch.zeros(B, 1, R, R, dtype=dtype, device=structural.device)
    return bias.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
