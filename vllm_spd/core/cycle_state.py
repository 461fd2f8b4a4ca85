"""The SPD cycle's state as tensors, advanced by branch-free torch functions.

The same rules as :class:`~vllm_spd.core.pipeline.RequestPipeline` and
:class:`~vllm_spd.core.pipeline.CommitGate` (the readable reference, ``verdict_lag`` 0),
for a whole batch at once and without any host decision, so that a cycle can be
captured in a CUDA graph and replayed back to back with no host work between cycles.
Nothing here knows vLLM; ``device_cycle.py`` is the glue.

Per batch row (a request, or a padding row that never moves):

- the *window* of in-flight tokens: slot ``j`` holds position ``head - j`` for
  ``j < wlen`` (newest first, contiguous positions), with its token and *depth*
  (stages completed); ``epoch`` counts the flushes;
- ``committed_len``: positions below it are committed; ``pending``: the token just
  before the window completed in the row's last cycle (the draft module's next row);
- the stop gate: stop ids, ``min_tokens``/``max_tokens``, outputs so far, ``stopped``;
- per engine step: ``limit`` (first position without a KV slot), ``budget`` (most
  commits this step) and the *ring* of tokens committed this step, read once per step.

A cycle on a *live* row (``real``, not stopped, budget left):

1. every token with depth < n is advanced by the stage at its depth
   (:meth:`CycleState.stage_plan` says which token each stage runs);
2. the draft enters at depth 0 at ``head + 1``, unless that position has no KV slot;
3. the token that reaches depth n completes; its target token ``y`` verifies the token
   after it: equal -> that draft is committed; else every newer token is dropped and
   ``y`` is committed and re-enters stage 0 alone (the epoch is bumped).

Rows that are not live do not change. Every function writes its results into the
state's own tensors (``copy_``), so a captured graph replays on the same memory.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from vllm_spd.kernels.backend import FusedKernel

I64 = torch.int64
#: The fields an engine step sets (``limit``, ``budget``) or resets (the rest): rows of one
#: contiguous ``[len(STEP_FIELDS), B]`` block, ``CycleState.step_block``, loaded by one copy.
STEP_FIELDS = ("limit", "budget", "ring_len", "cycles", "verified", "accepted")
#: the fused commit step; the torch code of ``CycleState.advance`` serves if it fails to build
_ADVANCE = FusedKernel("cycle bookkeeping")


@dataclass
class CycleState:
    tok: torch.Tensor            # [B, W] token per window slot
    depth: torch.Tensor          # [B, W]
    head: torch.Tensor           # [B] position of slot 0
    wlen: torch.Tensor           # [B] window length
    epoch: torch.Tensor          # [B] flushes so far
    committed_len: torch.Tensor  # [B]
    pending: torch.Tensor        # [B] 0/1: the token before the window completed in the row's last cycle
    stop_ids: torch.Tensor       # [B, S] stop token ids (EOS unless ignore_eos, stop_token_ids); -1 pads
    mask_ids: torch.Tensor       # [B, M] ids masked while num_output < min_tokens (padded by repeats)
    min_tokens: torch.Tensor     # [B]
    max_tokens: torch.Tensor     # [B]
    num_output: torch.Tensor     # [B]
    stopped: torch.Tensor        # [B] 0/1
    real: torch.Tensor           # [B] 0/1: a request (else padding)
    limit: torch.Tensor          # [B] first position without a KV slot
    budget: torch.Tensor         # [B] most commits this step
    ring: torch.Tensor           # [B, K] tokens committed this step
    ring_len: torch.Tensor       # [B]
    cycles: torch.Tensor         # [B] live cycles this step
    verified: torch.Tensor       # [B] drafts verified this step
    accepted: torch.Tensor       # [B] drafts accepted this step

    @classmethod
    def allocate(cls, batch: int, num_stages: int, ring: int, stop_slots: int = 4, mask_slots: int = 4,
                 device="cpu") -> "CycleState":
        def z(*shape):
            return torch.zeros(*shape, dtype=I64, device=device)

        st = cls(**{f.name: z(batch) for f in fields(cls)})
        st.step_block = z(len(STEP_FIELDS), batch)
        for i, name in enumerate(STEP_FIELDS):
            setattr(st, name, st.step_block[i])
        st.tok, st.depth = z(batch, num_stages + 1), z(batch, num_stages + 1)
        st.stop_ids = torch.full((batch, stop_slots), -1, dtype=I64, device=device)
        st.mask_ids = z(batch, mask_slots)
        st.ring = z(batch, ring)
        return st

    def rows(self, count: int) -> "CycleState":
        """The first ``count`` rows, as views of the same memory."""
        return CycleState(**{f.name: getattr(self, f.name)[:count] for f in fields(self)})

    @property
    def num_stages(self) -> int:
        return self.tok.shape[1] - 1

    def live(self) -> torch.Tensor:
        """[B] bool: rows that take part in this cycle."""
        return (self.real > 0) & (self.stopped == 0) & (self.ring_len < self.budget)

    def positions(self) -> torch.Tensor:
        """[B, W] position of each window slot."""
        return self.head[:, None] - torch.arange(self.tok.shape[1], device=self.tok.device)

    def valid(self) -> torch.Tensor:
        return torch.arange(self.tok.shape[1], device=self.tok.device) < self.wlen[:, None]

    def stage_plan(self, live: torch.Tensor):
        """What every stage runs this cycle: ``(runs, token, pos)``, each ``[n, B]``: for
        stage ``s``, the token of depth ``s`` in each live row (depths in a window are
        distinct); where there is none, ``runs`` is False and slot 0's token and position
        stand in. ``stage_plan.py`` adds the attention rows."""
        n = self.num_stages
        stages = torch.arange(n, device=self.tok.device)[:, None, None]
        hit = (self.valid() & live[:, None])[None] & (self.depth[None] == stages)      # [n, B, W]
        slot = hit.to(torch.int32).argmax(dim=2, keepdim=True)
        tok = self.tok[None].expand(n, -1, -1).gather(2, slot)[..., 0]
        return hit.any(dim=2), tok, self.head[None] - slot[..., 0]

    def mask_min_tokens(self, logits: torch.Tensor) -> None:
        """vLLM's min_tokens: stop tokens get -inf while fewer outputs exist (in place)."""
        on = (self.num_output < self.min_tokens)[:, None].expand_as(self.mask_ids)
        cur = logits.gather(1, self.mask_ids)
        logits.scatter_(1, self.mask_ids, torch.where(on, torch.full_like(cur, float("-inf")), cur))

    def advance(self, live: torch.Tensor, draft: torch.Tensor, target) -> None:
        """One cycle's bookkeeping after the stages ran: ``draft`` [B] enters, the
        completing token's ``target`` [B] (the target's token after it) gives the
        verdict, the gate admits the commit, the ring records it.

        ``target`` may be a function ``(candidate [B], position [B]) -> [B]`` of the
        token it judges (-1 where the completing token has no successor) and that
        token's position: sampled verification returns the candidate where it accepts
        it and the corrected token elsewhere.

        On a GPU a tensor ``target`` takes one fused Triton launch
        (``kernels/cycle_triton.py``); this torch code is the CPU path and its reference."""
        if not callable(target) and _ADVANCE.wanted(self.tok):
            from vllm_spd.kernels.cycle_triton import advance_triton

            if _ADVANCE.run(lambda: advance_triton(self, live, draft, target)):
                return
        n = self.num_stages
        W = n + 1
        ar = torch.arange(W, device=self.tok.device)
        valid = ar < self.wlen[:, None]
        lv = live[:, None]
        depth = self.depth + (valid & (self.depth < n) & lv).to(I64)
        # 2. the draft enters at depth 0 (the window shifts one slot older)
        want = live & (self.head + 1 < self.limit)
        w = want[:, None]
        tok = torch.where(w, torch.cat([draft[:, None], self.tok[:, :-1]], 1), self.tok)
        depth = torch.where(w, torch.cat([torch.zeros_like(depth[:, :1]), depth[:, :-1]], 1), depth)
        head = self.head + want.to(I64)
        wlen = self.wlen + want.to(I64)
        # 3. the oldest token completes at depth n and judges the one after it
        oldest = (wlen - 1).clamp(min=0)[:, None]
        done = live & (wlen >= 1) & (depth.gather(1, oldest)[:, 0] >= n)
        done_pos = head - oldest[:, 0]
        has_cand = wlen >= 2
        cand = tok.gather(1, (oldest - 1).clamp(min=0))[:, 0]
        if callable(target):
            target = target(torch.where(has_cand, cand, torch.full_like(cand, -1)), done_pos + 1)
        ok = done & has_cand & (cand == target)
        flush = done & ~ok
        f = flush[:, None]
        tok = torch.where(f & (ar == 0), target[:, None], tok)
        depth = torch.where(f, torch.zeros_like(depth), depth)
        wlen = torch.where(flush, torch.ones_like(wlen), wlen - ok.to(I64))
        head = torch.where(flush, done_pos + 1, head)
        # the gate: vLLM's check_stop on the committed token, the ring records it
        admit = done & (self.stopped == 0)
        a = admit.to(I64)
        at = torch.where(admit, self.ring_len, torch.zeros_like(self.ring_len)).clamp(max=self.ring.shape[1] - 1)
        ring = self.ring.scatter(1, at[:, None], torch.where(admit, target, self.ring.gather(1, at[:, None])[:, 0])[:, None])
        num_output = self.num_output + a
        stop = admit & (((self.stop_ids == target[:, None]).any(1)) | (num_output >= self.max_tokens))
        self.tok.copy_(tok)
        self.depth.copy_(depth)
        self.head.copy_(head)
        self.wlen.copy_(wlen)
        self.epoch.add_(flush.to(I64))
        self.committed_len.copy_(torch.where(done, done_pos + 2, self.committed_len))
        self.ring.copy_(ring)
        self.ring_len.add_(a)
        self.num_output.copy_(num_output)
        self.stopped.copy_(self.stopped | stop.to(I64))
        # the draft module writes the full-depth row of a completed token in the row's next cycle
        self.pending.copy_(torch.where(live, done.to(I64), self.pending))
        self.cycles.add_(live.to(I64))
        self.verified.add_((done & has_cand).to(I64))
        self.accepted.add_(ok.to(I64))
