"""The draft module inside the device cycle: its rows, anchors and metadata on the device.

Every cycle, before the stages run, the draft module reads each row's *draft rows*
(the same rows as the host cycle's ``DraftModule.rows``): the pending finished token at
full depth, if its row completed one last cycle, then the in-flight tokens oldest
first, each of the aggregation type of its depth. Here they are a fixed block of
``q = n + 1`` rows per request at consecutive positions: rows past the request's
count are dummies after its newest token (no KV slot; the real rows never attend to
them, being earlier), so query start locations are the constant ``b * q`` and
everything else is computed from the cycle state on the device.

Anchors live in a ring by position (``n + 2`` slots per request: the pending token,
the window and the next draft): stage ``s`` writes the anchors it produces for the
token it runs, a token's anchor 0 (its embedding) is written when it enters the
window, and the fused aggregation kernel reads rows straight from the ring through
its ``slots`` argument. A flushed token's higher anchors stay in the ring but are
never read: a row reads only the anchors of its type, which its own stages wrote.
"""

from __future__ import annotations

import torch

from vllm_spd.core.cycle_state import CycleState
from vllm_spd.core.stage_plan import device_slots
from vllm_spd.kernels import aggregate_anchors


class DeviceDrafts:
    def __init__(self, runner, max_batch: int):
        lay = runner.spd_layout
        self.runner = runner
        self.pdm = runner.spd_pdm
        self.n = n = lay.num_stages
        self.q = n + 1
        self.ring = n + 2
        dev = runner.device
        P, H = max_batch, runner.spd_hidden_size
        #: anchor index a (of ``lay.anchors``) of the token at position p of row b: ``anchors[a, b * ring + p % ring]``
        self.anchors = torch.zeros(lay.num_types, P * self.ring, H, dtype=self.pdm.lm_head.dtype, device=dev)
        self.depth_to_type = torch.tensor(lay.depth_to_type, dtype=torch.int64, device=dev)
        #: anchor id k -> its index in ``lay.anchors``, for the anchors each stage produces
        self.stage_anchors = [[(lay.anchors.index(k), k) for k in lay.anchors_of_stage(s) if k != 0]
                              for s in range(n)]
        rows = P * self.q
        self.query_start_loc = torch.arange(P + 1, dtype=torch.int32, device=dev) * self.q
        self.seq_lens = torch.full((P,), self.q, dtype=torch.int32, device=dev)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.slots = torch.full((rows,), -1, dtype=torch.int64, device=dev)
        self.meta: dict[int, tuple[dict, dict]] = {}
        #: sampled drafts' proposal q over the draft vocabulary, by position like the anchors
        self.proposals = torch.zeros(P * self.ring, self.pdm.draft_token_ids.numel(), dtype=torch.float32, device=dev)
        #: the draft at a position was proposed deterministically (hybrid's prompt lookup): q is one-hot
        self.deterministic = torch.zeros(P * self.ring, dtype=torch.bool, device=dev)
        #: the module's layers compiled (``stage_compile.CompiledStages``), set by the cycle; None: eager
        self.compiled = None

    # -- the ring ------------------------------------------------------------------------
    def ring_slot(self, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return rows * self.ring + pos.clamp(min=0) % self.ring

    def write(self, a: int, pos: torch.Tensor, value: torch.Tensor, where: torch.Tensor) -> None:
        """Anchor ``a`` of each row's token at ``pos`` [P], where ``where`` [P] holds."""
        P = pos.shape[0]
        at = self.ring_slot(torch.arange(P, device=pos.device), pos)
        cur = self.anchors[a, at]
        self.anchors[a, at] = torch.where(where[:, None], value.to(cur.dtype), cur)

    def stage_done(self, stage: int, anchors: dict, pos, runs) -> None:
        """The anchors ``stage`` produced (``{k: [P, H]}``) into the ring."""
        for a, k in self.stage_anchors[stage]:
            self.write(a, pos, anchors[k], runs)

    def entered(self, st: CycleState, live, embed) -> None:
        """After the cycle's bookkeeping: anchor 0 of each live row's newest token (the
        draft or corrected token that entered, or the same one again)."""
        self.write(0, st.head, embed(st.tok[:, 0]), live)

    def mark_deterministic(self, st: CycleState, live, where: torch.Tensor) -> None:
        """This cycle's drafts (at ``head + 1``) that ``where`` replaced by a deterministic proposal."""
        at = self.ring_slot(torch.arange(where.shape[0], device=where.device), st.head + 1)
        self.deterministic[at] = torch.where(live, where, self.deterministic[at])

    def deterministic_at(self, pos: torch.Tensor) -> torch.Tensor:
        return self.deterministic[self.ring_slot(torch.arange(pos.shape[0], device=pos.device), pos)]

    def q_of(self, pos: torch.Tensor) -> torch.Tensor:
        """[P, K]: the proposal each row's draft at ``pos`` was sampled from."""
        return self.proposals[self.ring_slot(torch.arange(pos.shape[0], device=pos.device), pos)]

    # -- one cycle's drafts ---------------------------------------------------------------
    def draft(self, st: CycleState, live: torch.Tensor, block_table, block_size: int, sampling=None) -> torch.Tensor:
        """Draft ids [P] (full vocabulary) for the position after each row's newest token,
        from the anchors before this cycle's stages: the argmax, or with ``sampling``
        (``(warp settings, seeds)``) a sample drawn with keyed noise, its q kept by position."""
        from vllm.forward_context import set_forward_context

        P, q, n = st.head.shape[0], self.q, self.n
        dev = st.head.device
        pend = st.pending * live.to(torch.int64)
        start = torch.where(live, st.head - st.wlen + 1 - pend, torch.zeros_like(st.head))
        count = torch.where(live, st.wlen + pend, torch.ones_like(st.head))
        j = torch.arange(q, device=dev)
        pos = start[:, None] + j                                        # [P, q]
        real = (j < count[:, None]) & live[:, None]
        slot = (st.wlen[:, None] - 1 - (j - pend[:, None])).clamp(0, n)
        depth = torch.where(j < pend[:, None], torch.full_like(pos, n), st.depth.gather(1, slot))
        types = self.depth_to_type[depth.clamp(max=n)].flatten()
        rows = torch.arange(P, device=dev)[:, None].expand(P, q)
        ring = self.ring_slot(rows, pos).flatten()
        p = pos.clamp(min=0)
        ok = real & (p < st.limit[:, None])
        self.positions[: P * q].copy_(p.flatten())
        self.slots[: P * q].copy_(device_slots(block_table[:P], p, ok, block_size).flatten())
        self.seq_lens[:P].copy_((start.clamp(min=0) + q).to(torch.int32))
        x = aggregate_anchors(self.anchors, types, self.pdm.packed, slots=ring)
        attn, slots = self._metadata(P, block_table)
        with set_forward_context(attn, self.runner.vllm_config, num_tokens=P * q, slot_mapping=slots):
            if self.compiled is not None:
                hidden, residual, _ = self.compiled(0, len(self.pdm.layers), self.positions[: P * q], x, None)
            else:
                hidden, residual = self.pdm(self.positions[: P * q], x)
        last = torch.arange(P, device=dev) * q + (count - 1).clamp(min=0)
        if sampling is None:
            return self.pdm.draft_greedy(hidden[last], residual[last])
        from vllm_spd.core import keyed_random as kr
        from vllm_spd.core import verify

        warp, seed = sampling
        logits = self.pdm.draft_logits(hidden[last], residual[last]).float()
        noise = kr.exponential(seed, st.head + 1, kr.SALT_DRAFT, logits.shape[1])
        ids, prop = verify.draft_proposal(logits, self.pdm.draft_token_ids, noise=noise, **warp)
        at = self.ring_slot(torch.arange(P, device=dev), st.head + 1)
        self.proposals[at] = torch.where(live[:, None], prop, self.proposals[at])
        self.deterministic[at] = torch.where(live, torch.zeros_like(live), self.deterministic[at])
        return ids

    def _metadata(self, P: int, block_table):
        if P in self.meta:
            return self.meta[P]
        runner = self.runner
        meta = runner.spd_slices.device_metadata(
            self.pdm.attention_layer_names, self.query_start_loc[: P + 1], self.seq_lens[:P], block_table[:P],
            self.slots[: P * self.q], max_query_len=self.q, max_seq_len=runner.max_model_len + self.q)
        if runner.device.type == "cuda":
            self.meta[P] = meta
        return meta

    # -- the host's per-request state in and out ---------------------------------------------
    def load(self, b: int, req, host_rows: list, q_rows: list) -> None:
        """Row ``b``'s anchors (``req.anchors``: pos -> {k: tensor}) and sampled drafts'
        proposals (``req.draft_q``: pos -> q), to go into the rings by :meth:`load_done`."""
        lay = self.runner.spd_layout
        for pos, got in req.anchors.items():
            for k, value in got.items():
                host_rows.append((lay.anchors.index(k), b * self.ring + pos % self.ring, value))
        for pos, q in req.draft_q.items():
            q_rows.append((b * self.ring + pos % self.ring, q))
        # the in-flight drafts without a proposal were proposed deterministically (hybrid's lookups)
        for e in req.pipe.window:
            if e.pos >= req.pipe.committed_len:
                q_rows.append((b * self.ring + e.pos % self.ring, None if e.pos in req.draft_q else True))

    def load_done(self, host_rows: list, q_rows: list, st: CycleState, B: int, embed) -> None:
        qs = [(s, q) for s, q in q_rows if isinstance(q, torch.Tensor)]
        if qs:
            at = torch.tensor([s for s, _ in qs], dtype=torch.int64).to(self.proposals.device, non_blocking=True)
            self.proposals[at] = torch.stack([q for _, q in qs]).to(self.proposals.dtype)
        flags = [(s, q is True) for s, q in q_rows if not isinstance(q, torch.Tensor)]
        if flags:
            at = torch.tensor([s for s, _ in flags], dtype=torch.int64)
            self.deterministic[at.to(self.deterministic.device)] = torch.tensor([f for _, f in flags]).to(
                self.deterministic.device)
        if host_rows:
            dev = self.anchors.device
            ix = torch.tensor([(a, s) for a, s, _ in host_rows], dtype=torch.int64).to(dev, non_blocking=True)
            self.anchors[ix[:, 0], ix[:, 1]] = torch.stack([v for _, _, v in host_rows]).to(self.anchors.dtype)
        # anchor 0 of every window token (fresh drafts of the host cycle get it only when drafted from)
        W = st.tok.shape[1]
        valid = (torch.arange(W, device=st.tok.device) < st.wlen[:B, None])
        pos = st.head[:B, None] - torch.arange(W, device=st.tok.device)
        at = self.ring_slot(torch.arange(B, device=pos.device)[:, None].expand(B, W), pos)
        emb = embed(st.tok[:B].flatten()).view(B, W, -1).to(self.anchors.dtype)
        cur = self.anchors[0, at]
        self.anchors[0, at] = torch.where(valid[..., None], emb, cur)

    def store(self, req, b: int, snap: torch.Tensor, pending: bool, qs: torch.Tensor | None,
              det: list | None = None) -> None:
        """Row ``b``'s anchors back into the request: each window token's anchors from the
        stages it completed, all of the pending token's; with ``qs``, the proposals of
        its in-flight drafts (``req.draft_q``)."""
        lay = self.runner.spd_layout
        produced = [[0]]
        for s in range(self.n):
            produced.append(produced[-1] + [k for k in lay.anchors_of_stage(s) if k != 0])
        entries = [(e.pos, e.depth) for e in req.pipe.window]
        if pending:
            entries.append((req.pipe.window[-1].pos - 1, self.n))
            req.pending = entries[-1][0]
        else:
            req.pending = None
        req.anchors = {pos: {k: snap[lay.anchors.index(k), b * self.ring + pos % self.ring]
                             for k in produced[min(depth, self.n)] if k in lay.anchors}
                       for pos, depth in entries}
        req.draft_q = {} if qs is None else {e.pos: qs[b * self.ring + e.pos % self.ring]
                                              for e in req.pipe.window if e.pos >= req.pipe.committed_len
                                              and not det[b * self.ring + e.pos % self.ring]}
