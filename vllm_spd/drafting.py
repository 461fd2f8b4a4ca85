"""Drafting on the controller: the oracle (benchmarks), prompt lookup, the Pipeline
Draft Module (on its own CUDA stream, eager or replayed from ``draft_graphs``) and
their hybrid. Mixed into the SPD runner; every method works on its state."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from vllm_spd import verify
from vllm_spd.ngram import match_ngram, propose_ngram
from vllm_spd.staged import Chunk, to_device
from vllm_spd.verdicts import row_params

if TYPE_CHECKING:
    from vllm_spd.runner import SPDRequest

logger = logging.getLogger("vllm_spd")


class DraftingMixin:
    def _spd_draft_vocab(self):
        return self.spd_pdm.draft_token_ids if self.spd_pdm is not None else None

    def _spd_draft_begin(self, active: list[SPDRequest], index, limit):
        """Prepare this cycle's drafting; returns ``launch``.

        The draft module's inputs are gathered now, before the stage forward is queued.
        ``launch()`` starts the draft module on its own (high-priority) CUDA stream and
        the host-side drafters (n-gram, prompt lookup, oracle), and returns ``finish()``,
        which gives the drafts. The runner launches after queueing the stage forward: the
        two run at once, and the stage's launch waits for no drafting work on the host."""
        wants = [req.pipe.draft_pos < limit[req.req_id] for req in active]
        cfg = self.spd_cfg
        if cfg.drafter == "oracle":
            self._spd_oracle()
            # With a head: priced, not used (the draft module runs as it would).
            priced = self._spd_pdm_begin(active, index, wants) if self.spd_pdm is not None and self.spd_price_pdm \
                else None

            def launch_oracle():
                head = priced() if priced is not None else None
                drafts = [self.spd_oracle.propose(self.requests[req.req_id].prompt_token_ids, req.pipe.draft_pos)
                          if w else None for req, w in zip(active, wants)]

                def finish():
                    if head is not None:
                        head()
                        for req in active:
                            req.draft_q.pop(req.pipe.draft_pos, None)
                    return drafts
                return finish
            return launch_oracle
        if self.spd_pdm is None:
            def launch_ngram():
                drafts = [self._spd_ngram(req, index[req.req_id]) if w else None for req, w in zip(active, wants)]
                return lambda: drafts
            return launch_ngram
        launch_head = self._spd_pdm_begin(active, index, wants)
        if cfg.drafter != "hybrid":
            return launch_head

        def launch_hybrid():
            head = launch_head()
            # Prompt lookup on the host while the draft module runs.
            # (Sampled requests above hybrid_max_temperature keep the head's draft.)
            lookups = [match_ngram(self._spd_tokens(req, index[req.req_id]), cfg.ngram_max, cfg.hybrid_min_match)
                       if w and (req.sampling.greedy or req.sampling.temperature <= cfg.hybrid_max_temperature) else None
                       for req, w in zip(active, wants)]

            def finish():
                drafts = head()
                for i, (req, found) in enumerate(zip(active, lookups)):
                    if found is not None and drafts[i] is not None:
                        # The proposal is now deterministic: verification treats it as one-hot.
                        req.draft_q.pop(req.pipe.draft_pos, None)
                        drafts[i] = found[0]
                return drafts
            return finish
        return launch_hybrid

    def _spd_oracle(self):
        """The oracle drafter (a benchmark instrument), read from ``oracle_tokens`` once."""
        if not hasattr(self, "spd_oracle"):
            from vllm_spd.oracle import OracleDrafter

            cfg = self.spd_cfg
            self.spd_oracle = OracleDrafter.from_file(cfg.oracle_tokens, cfg.oracle_alpha,
                                                      self.model_config.get_vocab_size())
        return self.spd_oracle

    def _spd_tokens(self, req: SPDRequest, idx: int) -> list[int]:
        """The request's committed tokens followed by its unverified in-flight ones."""
        batch = self.input_batch
        tokens = batch.token_ids_cpu[idx, : int(batch.num_tokens_no_spec[idx])].tolist()
        return tokens + [e.token for e in reversed(req.pipe.unverified())]

    def _spd_ngram(self, req: SPDRequest, idx: int) -> int:
        return propose_ngram(self._spd_tokens(req, idx), self.spd_cfg.ngram_max, self.spd_cfg.ngram_min)

    def _spd_side_stream(self):
        """The draft module's own CUDA stream (None on CPU), at high priority: its few
        small kernels are what the next cycle waits for, so they go ahead of queued stage
        kernels as soon as the GPU has room."""
        if self.device.type != "cuda":
            return None
        if getattr(self, "_spd_stream", None) is None:
            self._spd_stream = torch.cuda.Stream(self.device, priority=-1)
        return self._spd_stream

    def _spd_on_side_stream(self):
        from contextlib import nullcontext

        stream = self._spd_side_stream()
        return nullcontext() if stream is None else torch.cuda.stream(stream)

    def _spd_pdm_rows(self, active, index):
        """The draft module's rows this cycle: per request its finished token (full
        depth) then its in-flight tokens, oldest first. Returns ``(chunks, where, types,
        owners)``: ``where`` lists ``(anchor slot, row, tensor)`` for every anchor a row's
        type reads."""
        lay = self.spd_layout
        # A token that has not entered stage 0 yet has no anchor 0 (its embedding).
        fresh = [(req, e) for req in active for e in req.pipe.window if 0 not in req.anchors.get(e.pos, {})]
        if fresh:
            emb = self._spd_embed(to_device([e.token for _, e in fresh], self.device))
            for row, (req, e) in enumerate(fresh):
                req.anchors.setdefault(e.pos, {})[0] = emb[row]
        chunks, where, types = [], [], []
        for req in active:
            rows = []
            if req.pending is not None:
                rows.append((req.pending, lay.num_stages))
            rows += [(e.pos, e.depth) for e in reversed(req.pipe.window) if e.pos != req.pending]
            chunks.append(Chunk(index[req.req_id], rows[0][0], len(rows)))
            for pos, depth in rows:
                t = lay.depth_to_type[min(depth, lay.num_stages)]
                anchors = req.anchors[pos]
                where += [(a, len(types), anchors[k]) for a, k in enumerate(lay.anchors[: t + 1])]
                types.append(t)
        return chunks, where, types, list(active)

    def _spd_pdm_begin(self, active, index, wants):
        chunks, where, rows_type, owners = self._spd_pdm_rows(active, index)
        greedy = all(req.sampling.greedy for req in owners)
        graphs = self._spd_draft_graphs() if greedy else None
        side = self._spd_side_stream()
        main = torch.cuda.current_stream(self.device) if side is not None else None
        if graphs is not None and graphs.fits(chunks):
            # Inputs into the fixed-shape path's own buffers (anchors are final on this stream).
            graphs.stage(chunks, where, rows_type)

            def run():
                return graphs.draft(chunks), None
        else:
            lay = self.spd_layout
            # The rows are gathered on the main stream: anchors are final there, and may
            # be freed once copied.
            stack = torch.zeros(lay.num_types, len(rows_type), self.spd_hidden_size, dtype=self.spd_pdm.lm_head.dtype,
                                device=self.device)
            if where:   # one gather and one scatter, not a copy per (row, anchor)
                at = to_device([(a, r) for a, r, _ in where], self.device).T
                stack[at[0], at[1]] = torch.stack([v for _, _, v in where]).to(stack.dtype)
            types = to_device(rows_type, self.device)
            last = to_device([c.num_tokens for c in chunks], self.device).cumsum(0) - 1
            if side is not None:
                for t in (stack, types, last):
                    t.record_stream(side)

            def run():
                hidden, residual = self._pdm_forward(chunks, stack, types)
                if greedy:
                    return self.spd_pdm.draft_greedy(hidden[last], residual[last]), None
                logits = self.spd_pdm.draft_logits(hidden[last], residual[last]).float()
                kw = row_params([req.sampling for req in owners], self.device)
                ids, q = verify.draft_proposal(logits, self.spd_pdm.draft_token_ids, **kw)
                if side is not None:
                    q.record_stream(main)   # verification reads it on the main stream
                return ids, q
        if side is not None:
            side.wait_stream(main)
        for req in owners:
            # The pending row goes into the draft module's cache now; its anchors can go.
            if req.pending is not None:
                req.anchors.pop(req.pending, None)
                req.pending = None

        def launch():
            with self._spd_on_side_stream():
                ids, q = run()

            def finish() -> list[int | None]:
                with self._spd_on_side_stream():
                    tokens = ids.tolist()   # waits for the draft module only
                drafts = []
                for row, (req, want) in enumerate(zip(owners, wants)):
                    if not want:
                        drafts.append(None)
                        continue
                    if q is not None and not req.sampling.greedy:
                        req.draft_q[req.pipe.draft_pos] = q[row]
                    drafts.append(int(tokens[row]))
                return drafts
            return finish
        return launch

    def _spd_draft_graphs(self):
        """The draft module's fixed-shape path (``draft_graphs.py``): captured on a GPU by
        :meth:`capture_model`, run eagerly on CPU; None where it is off."""
        if not hasattr(self, "spd_draft_graphs"):
            from vllm_spd import envs
            from vllm_spd.draft_graphs import DraftGraphs

            cpu = self.device.type != "cuda" and envs.draft_graphs()
            self.spd_draft_graphs = DraftGraphs(self) if cpu and self.spd_pdm is not None else None
        return self.spd_draft_graphs

    def capture_model(self):
        """vLLM's graphs, then the draft module's (on the controller, where supported)."""
        size = super().capture_model()
        if self.spd_pdm is not None:
            from vllm_spd.draft_graphs import DraftGraphs, graphs_supported

            size = self._spd_capture_graphs(size, "the draft module", graphs_supported, DraftGraphs,
                                            "spd_draft_graphs")
        return size

    def _spd_capture_graphs(self, size, what: str, supported, make, attr: str):
        """Capture one of SPD's own graph sets after vLLM's: where ``supported(self)``
        allows it, ``make(self).capture()`` is kept as ``self.<attr>`` and the device
        memory it took is added to ``size`` (vLLM's figure for its graphs); otherwise
        ``what`` runs eagerly, and the log says why."""
        ok, why = supported(self)
        if not ok:
            logger.info("spd: %s runs eagerly (%s)", what, why)
            return size
        free = torch.cuda.mem_get_info(self.device)[0]
        graphs = make(self)
        graphs.capture()
        setattr(self, attr, graphs)
        return (size or 0) + max(0, free - torch.cuda.mem_get_info(self.device)[0])

    def _pdm_forward(self, chunks: list[Chunk], stack: torch.Tensor, types: torch.Tensor):
        pdm = self.spd_pdm
        rows = pdm.aggregate(stack, types)
        return self.spd_slices.run_module(lambda pos: pdm(pos, rows), chunks, pdm.attention_layer_names)
