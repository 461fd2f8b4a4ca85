"""The host cycle's drafters on the controller, behind one small interface
(:class:`Drafter`): the oracle (benchmarks), prompt lookup, the Pipeline Draft Module
(on its own CUDA stream, eager or replayed from ``draft_graphs``) and their hybrid.
:func:`make_drafter` picks one from the config and whether a head is loaded."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable

import torch

from vllm_spd.core import verify
from vllm_spd.drafters.ngram import match_ngram, propose_ngram
from vllm_spd.engine.staged import Chunk, to_device
from vllm_spd.engine.verdicts import row_params

if TYPE_CHECKING:
    from vllm_spd.drafters.oracle import OracleDrafter
    from vllm_spd.engine.runner import SPDRequest

#: The drafts of one cycle, one per active request (None: no draft wanted).
Finish = Callable[[], "list[int | None]"]
Launch = Callable[[], Finish]


class Drafter:
    """One cycle's drafts for the runner's active requests.

    :meth:`begin` gathers the inputs before the stage forward is queued and returns
    ``launch``; the runner calls ``launch()`` once the stage forward is queued, so the
    two run at once and the stage's launch waits for no drafting work on the host;
    ``launch()`` returns ``finish()``, which gives the drafts."""

    #: the draft module this drafter runs (to draft, or only to price it), or None
    module: DraftModule | None = None

    def __init__(self, runner):
        self.runner = runner

    def begin(self, active: list[SPDRequest], index: dict[str, int], wants: list[bool]) -> Launch:
        """Prepare this cycle's drafting for ``active`` (``index``: req_id -> batch row;
        ``wants``: per request, whether it takes a draft this cycle)."""
        raise NotImplementedError

    @property
    def vocab(self) -> torch.Tensor | None:
        """The draft vocabulary's token ids (verification maps the draft module's
        proposals through them), or None without a draft module."""
        return self.module.vocab if self.module is not None else None

    def prefill(self, chunks: list[Chunk], stack: torch.Tensor, types: torch.Tensor) -> None:
        """Prefill chunks into the draft module's cache (nothing without a draft module)."""
        if self.module is not None:
            self.module.prefill(chunks, stack, types)

    def capture(self, size):
        """The draft module's CUDA graphs, after vLLM's (``size``: vLLM's figure for its
        graphs, with theirs added)."""
        return self.module.capture(size) if self.module is not None else size


def tokens_of(runner, req: SPDRequest, idx: int) -> list[int]:
    """The request's committed tokens followed by its unverified in-flight ones."""
    batch = runner.input_batch
    tokens = batch.token_ids_cpu[idx, : int(batch.num_tokens_no_spec[idx])].tolist()
    return tokens + [e.token for e in reversed(req.pipe.unverified())]


class PromptLookup(Drafter):
    """Prompt lookup (n-gram), on the host: the drafter that needs no weights."""

    def begin(self, active, index, wants):
        cfg = self.runner.spd_cfg

        def launch():
            drafts = [propose_ngram(tokens_of(self.runner, req, index[req.req_id]), cfg.ngram_max, cfg.ngram_min)
                      if w else None for req, w in zip(active, wants)]
            return lambda: drafts
        return launch


class DraftModule(Drafter):
    """The Pipeline Draft Module (``spd_pdm``) on the controller: each cycle its rows
    (:meth:`rows`) on its own high-priority CUDA stream, eagerly or through the
    fixed-shape path (``draft_graphs.py``)."""

    def __init__(self, runner):
        super().__init__(runner)
        self.module = self
        self._stream = None

    @property
    def vocab(self):
        return self.runner.spd_pdm.draft_token_ids

    def side_stream(self):
        """The draft module's own CUDA stream (None on CPU), at high priority: its few
        small kernels are what the next cycle waits for, so they go ahead of queued stage
        kernels as soon as the GPU has room."""
        runner = self.runner
        if runner.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(runner.device, priority=-1)
        return self._stream

    def on_side_stream(self):
        stream = self.side_stream()
        return nullcontext() if stream is None else torch.cuda.stream(stream)

    def graphs(self):
        """The draft module's fixed-shape path (``draft_graphs.py``): captured on a GPU by
        :meth:`capture`, run eagerly on CPU; None where it is off."""
        if not hasattr(self, "draft_graphs"):
            from vllm_spd import envs
            from vllm_spd.engine.draft_graphs import DraftGraphs

            cpu = self.runner.device.type != "cuda" and envs.draft_graphs()
            self.draft_graphs = DraftGraphs(self.runner) if cpu else None
        return self.draft_graphs

    def capture(self, size):
        from vllm_spd.engine.draft_graphs import DraftGraphs, graphs_supported

        return self.runner._spd_capture_graphs(size, "the draft module", graphs_supported, DraftGraphs,
                                               "draft_graphs", owner=self)

    def prefill(self, chunks, stack, types):
        self.forward(chunks, stack, types)

    def forward(self, chunks: list[Chunk], stack: torch.Tensor, types: torch.Tensor):
        runner = self.runner
        pdm = runner.spd_pdm
        rows = pdm.aggregate(stack, types)
        return runner.spd_slices.run_module(lambda pos: pdm(pos, rows), chunks, pdm.attention_layer_names)

    def rows(self, active, index):
        """The draft module's rows this cycle: per request its finished token (full
        depth) then its in-flight tokens, oldest first. Returns ``(chunks, where, types,
        owners)``: ``where`` lists ``(anchor slot, row, tensor)`` for every anchor a row's
        type reads."""
        runner = self.runner
        lay = runner.spd_layout
        # A token that has not entered stage 0 yet has no anchor 0 (its embedding).
        fresh = [(req, e) for req in active for e in req.pipe.window if 0 not in req.anchors.get(e.pos, {})]
        if fresh:
            emb = runner._spd_embed(to_device([e.token for _, e in fresh], runner.device))
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

    def begin(self, active, index, wants):
        runner = self.runner
        device = runner.device
        chunks, where, rows_type, owners = self.rows(active, index)
        greedy = all(req.sampling.greedy for req in owners)
        graphs = self.graphs() if greedy else None
        side = self.side_stream()
        main = torch.cuda.current_stream(device) if side is not None else None
        if graphs is not None and graphs.fits(chunks):
            # Inputs into the fixed-shape path's own buffers (anchors are final on this stream).
            graphs.stage(chunks, where, rows_type)

            def run():
                return graphs.draft(chunks), None
        else:
            lay = runner.spd_layout
            pdm = runner.spd_pdm
            # The rows are gathered on the main stream: anchors are final there, and may
            # be freed once copied.
            stack = torch.zeros(lay.num_types, len(rows_type), runner.spd_hidden_size, dtype=pdm.lm_head.dtype,
                                device=device)
            if where:   # one gather and one scatter, not a copy per (row, anchor)
                at = to_device([(a, r) for a, r, _ in where], device).T
                stack[at[0], at[1]] = torch.stack([v for _, _, v in where]).to(stack.dtype)
            types = to_device(rows_type, device)
            last = to_device([c.num_tokens for c in chunks], device).cumsum(0) - 1
            if side is not None:
                for t in (stack, types, last):
                    t.record_stream(side)

            def run():
                hidden, residual = self.forward(chunks, stack, types)
                if greedy:
                    return pdm.draft_greedy(hidden[last], residual[last]), None
                logits = pdm.draft_logits(hidden[last], residual[last]).float()
                kw = row_params([req.sampling for req in owners], device)
                ids, q = verify.draft_proposal(logits, pdm.draft_token_ids, **kw)
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
            with self.on_side_stream():
                ids, q = run()

            def finish() -> list[int | None]:
                with self.on_side_stream():
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


class Hybrid(Drafter):
    """The draft module, overridden by prompt lookup where it matches a long enough
    suffix (for requests no hotter than ``hybrid_max_temperature``)."""

    def __init__(self, runner, module: DraftModule):
        super().__init__(runner)
        self.module = module

    def begin(self, active, index, wants):
        cfg = self.runner.spd_cfg
        launch_head = self.module.begin(active, index, wants)

        def launch():
            head = launch_head()
            # Prompt lookup on the host while the draft module runs.
            # (Sampled requests above hybrid_max_temperature keep the head's draft.)
            lookups = [match_ngram(tokens_of(self.runner, req, index[req.req_id]), cfg.ngram_max,
                                   cfg.hybrid_min_match)
                       if w and (req.sampling.greedy or req.sampling.temperature <= cfg.hybrid_max_temperature)
                       else None
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
        return launch


class Oracle(Drafter):
    """The oracle (a benchmark instrument, ``oracle.py``). With a draft module and the
    runner's ``spd_price_pdm`` set, the draft module also runs each cycle as it would,
    its drafts unused, to price drafting."""

    def __init__(self, runner, module: DraftModule | None, proposer: OracleDrafter | None = None):
        super().__init__(runner)
        self.module = module
        self._proposer = proposer

    @property
    def proposer(self) -> OracleDrafter:
        """The recorded continuations, read from ``oracle_tokens`` once (unless given)."""
        if self._proposer is None:
            from vllm_spd.drafters.oracle import OracleDrafter

            runner = self.runner
            cfg = runner.spd_cfg
            self._proposer = OracleDrafter.from_file(cfg.oracle_tokens, cfg.oracle_alpha,
                                                     runner.model_config.get_vocab_size())
        return self._proposer

    def begin(self, active, index, wants):
        runner = self.runner
        proposer = self.proposer
        priced = self.module.begin(active, index, wants) if self.module is not None and runner.spd_price_pdm \
            else None

        def launch():
            head = priced() if priced is not None else None
            drafts = [proposer.propose(runner.requests[req.req_id].prompt_token_ids, req.pipe.draft_pos)
                      if w else None for req, w in zip(active, wants)]

            def finish():
                if head is not None:
                    head()
                    for req in active:
                        req.draft_q.pop(req.pipe.draft_pos, None)
                return drafts
            return finish
        return launch


def make_drafter(runner, module: DraftModule | None = None, proposer: OracleDrafter | None = None) -> Drafter:
    """The drafter ``runner.spd_cfg.drafter`` names, given whether a head is loaded
    (``runner.spd_pdm``): the oracle; without a head, prompt lookup; with one, the draft
    module, or the hybrid. ``module``: the draft module's drafter to keep (its stream,
    its captured graphs) when the choice is made again on a live runner; ``proposer``:
    the oracle's recorded continuations, instead of ``oracle_tokens``."""
    if module is None and runner.spd_pdm is not None:
        module = DraftModule(runner)
    drafter = runner.spd_cfg.drafter
    if drafter == "oracle":
        return Oracle(runner, module, proposer)
    if module is None:
        return PromptLookup(runner)
    if drafter != "hybrid":
        return module
    return Hybrid(runner, module)
