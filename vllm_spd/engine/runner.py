"""Staged execution inside vLLM's V1 model runner (GPU and CPU variants).

One engine step (``execute_model``) does, for the scheduled requests:

- *prefill* chunks of requests without a pipeline: every target layer over the
  chunk, anchors captured at every position, the draft module's cache filled with
  those positions at full depth; when the prompt is done the first token is sampled
  from the target and becomes the request's first in-flight token;
- up to ``cycles_per_step`` SPD *cycles* for requests with a pipeline: drafts from
  the drafter, every stage advancing the token at its depth (its own attention
  metadata over the paged KV cache), completions verified, tokens committed. A step
  that also prefills commits at most one token per decoding request: a new request's
  first token does not wait for a whole step of the others.

Committed tokens go back through vLLM's spec-decode accounting (the scheduler
schedules ``1 + (C-1)`` placeholder tokens and rolls back the unused ones), so the
scheduler's ``num_computed_tokens`` stays the committed frontier. In-flight tokens
past it live only here; their KV slots are rewritten before anything reads them.

Placement: with one worker, every stage runs here, stage after stage (exact, no
speedup). With one stage per pipeline-parallel rank, every rank runs this same loop
in lockstep on identical copies of the request pipelines; each runs only its own
stage, and :class:`~vllm_spd.engine.stage_link.StageLink` moves stage outputs and anchors
between ranks. The *controller* (last stage) drafts, verifies and broadcasts each
cycle's drafts and verdicts; the others apply them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_spd.core import layout as layout_mod
from vllm_spd.core.pipeline import CommitGate, RequestPipeline
from vllm_spd.drafters.drafting import Drafter, make_drafter
from vllm_spd.engine.cycle_timer import CycleTimer
from vllm_spd.engine.stage_link import CONTROL_FIELDS, TAG_ANCHORS, TAG_STAGE, StageLink, decode_control, encode_control
from vllm_spd.engine.staged import Chunk, SliceRunner, to_device
from vllm_spd.engine.step_profiler import StepProfiler
from vllm_spd.engine.target_rules import TargetRules
from vllm_spd.engine.verdicts import RequestSampling, Verdicts, sample_target, verify_drafts

logger = logging.getLogger("vllm_spd")


@dataclass
class SPDRequest:
    req_id: str
    pipe: RequestPipeline
    sampling: RequestSampling
    #: pos -> (hidden, residual) of an in-flight token after the stages it completed
    carry: dict = field(default_factory=dict)
    #: pos -> {anchor id: [H]} of in-flight tokens and the pending finished token
    anchors: dict = field(default_factory=dict)
    #: finished token whose full-depth row the draft module writes next cycle
    pending: int | None = None
    #: pos -> draft proposal q over the draft vocabulary (sampled drafts only)
    draft_q: dict = field(default_factory=dict)
    gate: CommitGate | None = None
    #: verdict_lag 1: (token, Verdicts, row) of the verdict queued when ``token`` left the last stage
    early: tuple | None = None
    #: the device cycle's key for this request's random draws (keyed_random): its seed, or one drawn at start
    seed: int = 0
    #: penalties, bad words, allowed tokens, logit bias, logprobs (``target_rules``); None: none of them
    rules: TargetRules | None = None
    #: controller: the logprobs of the token the verdict just read commits
    verdict_logprobs: tuple | None = None
    #: controller: logprob rows of the tokens committed this step
    logprob_rows: list = field(default_factory=list)

    @property
    def follows_grammar(self) -> bool:
        """A structured-output request: its verification takes the grammar's mask for the
        committed frontier, which vLLM computes once a step."""
        return self.rules is not None and self.rules.grammar


@dataclass
class StepStats:
    cycles: int = 0
    verified: int = 0
    accepted: int = 0
    committed: int = 0


class SPDRunnerMixin:
    """Mixed into vLLM's (GPU or CPU) V1 model runner; see module docstring."""

    def _spd_setup(self, spd_cfg) -> None:
        self.spd_cfg = spd_cfg
        self.spd_requests: dict[str, SPDRequest] = {}
        self.spd_pdm = None
        self.spd_link: StageLink | None = None
        self.spd_embedding: torch.Tensor | None = None
        self.spd_timer = CycleTimer(self.device)
        #: req_id -> the grammar's bitmask at the committed frontier, this step
        self.spd_masks: dict = {}
        #: oracle drafter with a head: run the head each cycle (unused) to price drafting
        self.spd_price_pdm = True

    @property
    def spd_is_controller(self) -> bool:
        """Drafts and verifies: the only worker, or the last stage's rank."""
        return self.spd_link is None or self.spd_link.is_controller

    def _spd_stages_here(self) -> list[int]:
        return list(range(self.spd_layout.num_stages)) if self.spd_link is None else [self.spd_link.stage]

    # -- model loading -----------------------------------------------------------
    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        from vllm.config import set_current_vllm_config

        model = self.get_model()
        tm = model.model
        hf = self.model_config.hf_text_config
        head_cfg = None
        if self.spd_cfg.model is not None:   # a head: drafter "head", or "oracle" pricing it
            from vllm_spd import checkpoint

            head_cfg = checkpoint.read_config(self.spd_cfg.model)
        anchors = head_cfg.anchors if head_cfg else None
        self.spd_layout = layout_mod.StageLayout.build(
            hf.num_hidden_layers, self.spd_cfg.num_stages, anchors, self.spd_cfg.stage_layers)
        layer_names = {i: tm.layers[i].self_attn.attn.layer_name for i in range(tm.start_layer, tm.end_layer)}
        from vllm.distributed import get_pp_group

        pp = get_pp_group()
        if pp.world_size > 1:
            self.spd_link = StageLink(pp, self.device)
            mine = self.spd_layout.ranges[pp.rank_in_group]
            if mine != (tm.start_layer, tm.end_layer):
                raise RuntimeError(f"spd: stage {pp.rank_in_group} should own layers {mine} but this pipeline "
                                   f"rank holds [{tm.start_layer}, {tm.end_layer})")
            self._spd_setup_stage_forward(tm, layer_names)
        extra = []
        if head_cfg is not None and self.spd_is_controller:
            from vllm_spd.drafters.pdm import PipelineDraftModule

            from vllm.utils.torch_utils import set_default_torch_dtype

            # vLLM's layers take their parameter dtype from torch's default, as when the
            # target itself is built.
            with set_current_vllm_config(self.vllm_config), set_default_torch_dtype(self.model_config.dtype):
                pdm = PipelineDraftModule(self.vllm_config, head_cfg, model).to(self.device)
            pdm.load_head(self.spd_cfg.model)
            from vllm.model_executor.model_loader.utils import process_weights_after_loading

            process_weights_after_loading(pdm, self.model_config, self.device)
            pdm.eval()
            self.spd_pdm = pdm
            extra = pdm.attention_layer_names
            from vllm.model_executor.models.utils import PPMissingLayer

            if isinstance(tm.embed_tokens, PPMissingLayer):
                from vllm_spd.engine.target_weights import load_target_embedding

                self.spd_embedding = load_target_embedding(self.vllm_config.load_config, self.model_config,
                                                           self.device)
            logger.info("spd: loaded draft head %s (%d draft layers, %d draft tokens, anchors %s)",
                        self.spd_cfg.model, head_cfg.num_draft_layers, head_cfg.draft_vocab_size, head_cfg.anchors)
        self.spd_slices = SliceRunner(self, layer_names, extra)
        self.spd_drafter: Drafter = make_drafter(self)
        logger.info("spd: %d stages over layers %s", self.spd_layout.num_stages, list(self.spd_layout.ranges))

    def _spd_setup_stage_forward(self, tm, layer_names: dict[int, str]) -> None:
        """Decode cycles run this rank's stage through vLLM's own (compiled, CUDA-graphed)
        model forward. The anchors the stage owes the draft module come out of it as
        the model's auxiliary hidden states (hidden + residual after a layer, the same
        definition as an anchor), local to this rank."""
        stage = self.spd_link.stage
        local = self._spd_stage_anchor_ids(stage)
        if local and not hasattr(tm, "_maybe_add_hidden_state"):
            raise RuntimeError(f"spd: {type(tm).__name__} cannot return auxiliary hidden states (the draft "
                               "module's anchors) from its forward")
        if hasattr(tm, "_maybe_add_hidden_state"):
            tm.aux_hidden_state_layers = tuple(local)
            tm._aux_slot_base_cached = 0          # only this rank's anchors, none from upstream
            tm._aux_upstream_total_cached = 0
        self.spd_stage_anchors = local
        self.spd_inbound = self._spd_inbound()
        first, last = self.spd_layout.ranges[stage]
        self.spd_stage_layer_names = [layer_names[i] for i in range(first, last)]
        if local and self.spd_link.is_controller:
            self.use_aux_hidden_state_outputs = True   # the last rank's forward returns (hidden, aux)

    def take_draft_token_ids(self):
        return None

    # -- one engine step -----------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, scheduler_output, intermediate_tensors=None):
        """One engine step. With structured-output requests scheduled, the step waits for
        the grammar's bitmask: vLLM's engine then computes it and calls
        :meth:`sample_tokens`, which runs the step."""
        if getattr(scheduler_output, "has_structured_output_requests", False):
            self.spd_deferred = scheduler_output
            return None
        return self._spd_step(scheduler_output, None)

    @torch.inference_mode()
    def sample_tokens(self, grammar_output):
        scheduler_output, self.spd_deferred = getattr(self, "spd_deferred", None), None
        if scheduler_output is None:
            raise RuntimeError("spd: sample_tokens without a deferred step")
        return self._spd_step(scheduler_output, grammar_output)

    def _spd_step(self, scheduler_output, grammar_output):
        from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput

        self._update_states(scheduler_output)
        self.spd_masks = self._spd_frontier_masks(scheduler_output, grammar_output)
        for req_id in (*scheduler_output.finished_req_ids, *(scheduler_output.preempted_req_ids or ())):
            self.spd_requests.pop(req_id, None)
        for req_id in list(self.spd_requests):
            if req_id not in self.requests:
                del self.spd_requests[req_id]
        if not scheduler_output.total_num_scheduled_tokens:
            return EMPTY_MODEL_RUNNER_OUTPUT

        batch = self.input_batch
        committed: dict[str, list[int]] = {}
        prefill, decode = [], []
        for idx, req_id in enumerate(batch.req_ids):
            num_sched = scheduler_output.num_scheduled_tokens.get(req_id, 0)
            if not num_sched:
                continue
            if req_id in scheduler_output.scheduled_cached_reqs.resumed_req_ids:
                self.spd_requests.pop(req_id, None)
            if req_id in self.spd_requests:
                decode.append((idx, req_id, num_sched))
            else:
                prefill.append((idx, req_id, num_sched))
        if prefill and decode:
            # A step that prefills commits at most one token per decoding request, so the
            # prefilled request's first token waits for one cycle of the others, not for
            # a whole step of them, and it decodes in step with them from the next step.
            decode = [(idx, req_id, 1) for idx, req_id, _ in decode]
        stats: dict[str, StepStats] = {}
        prompt_logprobs = {}
        if prefill:
            committed.update(self._spd_prefill(prefill, prompt_logprobs))
        if decode:
            if getattr(self, "spd_profiler", None) is None:
                self.spd_profiler = StepProfiler(0 if self.spd_link is None else self.spd_link.stage)
            with self.spd_profiler.decode_step(self.spd_timer):
                committed.update(self._spd_decode(decode, stats))

        req_ids = list(batch.req_ids)
        out = ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=[committed.get(r, []) for r in req_ids],
            logprobs=self._spd_logprobs(req_ids),
            prompt_logprobs_dict=prompt_logprobs,
        )
        out.spd_stats = {r: (s.cycles, s.verified, s.accepted, s.committed) for r, s in stats.items()}
        return out

    @staticmethod
    def _spd_frontier_masks(scheduler_output, grammar_output) -> dict:
        """req_id -> the grammar's bitmask row for the token after the committed frontier
        (the first of each request's rows: the rest are for vLLM's drafts, none here)."""
        if grammar_output is None or grammar_output.grammar_bitmask is None:
            return {}
        spec = scheduler_output.scheduled_spec_decode_tokens
        masks, row = {}, 0
        for req_id in grammar_output.structured_output_request_ids:
            masks[req_id] = grammar_output.grammar_bitmask[row]
            row += 1 + len(spec.get(req_id, ()))
        return masks

    def _spd_target_logits(self, normed: torch.Tensor, reqs: list[SPDRequest]):
        """The target's float32 logits after each row's request: ``(raw, processed)``.
        Raw: with the grammar's mask, which vLLM applies before its sampler (so it is in
        raw logprobs too); processed: then min_tokens and the request's rules."""
        raw = self.get_model().compute_logits(normed).float()
        rows = [r for r, req in enumerate(reqs) if req.req_id in self.spd_masks]
        if rows:
            import xgrammar as xgr

            bitmask = torch.from_numpy(np.stack([self.spd_masks[reqs[r].req_id] for r in rows]))
            full = torch.full((raw.shape[0], bitmask.shape[1]), -1, dtype=bitmask.dtype)
            full[rows] = bitmask
            xgr.apply_token_bitmask_inplace(raw, full.to(raw.device), indices=rows if raw.is_cpu else
                                            torch.tensor(rows, dtype=torch.int32, device=raw.device))
        ruled = any(r.rules is not None for r in reqs)
        logits = raw.clone() if ruled else raw
        self._spd_apply_min_tokens(logits, reqs)
        if ruled:
            from vllm_spd.engine.target_rules import apply_rules

            apply_rules(logits, [r.rules for r in reqs], [self.requests[r.req_id].output_token_ids for r in reqs])
        return raw, logits

    # -- prefill ---------------------------------------------------------------------
    def _spd_prefill(self, work, prompt_logprobs: dict) -> dict[str, list[int]]:
        batch = self.input_batch
        model = self.get_model()
        tm = model.model
        link = self.spd_link
        chunks, finishing = [], []
        for idx, req_id, num_sched in work:
            start = int(batch.num_computed_tokens_cpu[idx])
            total = int(batch.num_tokens_no_spec[idx])
            end = min(start + num_sched, total)
            chunks.append(Chunk(idx, start, end - start))
            finishing.append(end >= total)
        lay = self.spd_layout
        stages = self._spd_stages_here()
        first, last = lay.ranges[stages[0]][0], lay.ranges[stages[-1]][1]
        num_tokens = sum(c.num_tokens for c in chunks)

        def chunk_ids() -> torch.Tensor:
            return torch.from_numpy(np.concatenate(
                [batch.token_ids_cpu[c.req_index, c.start:c.start + c.num_tokens] for c in chunks])).to(self.device)

        anchors = {}
        for src, tag, ks, carries in (self.spd_inbound if link is not None else []):
            x = link.recv((2 * carries + len(ks), num_tokens, self.spd_hidden_size), self.spd_dtype, src, tag)
            if carries:
                hidden, residual, x = x[0], x[1], x[2:]
            anchors.update(zip(ks, x))
        if first == 0:
            hidden, residual = tm.embed_input_ids(chunk_ids()), None
            if 0 in lay.anchors:
                # A copy: the first layer takes ``hidden`` as its residual, which vLLM's
                # fused add + RMSNorm then updates in place on CUDA.
                anchors[0] = hidden.clone()
        hidden, residual, caught = self.spd_slices.run_layers(
            tm.layers, first, last, chunks, hidden, residual, capture=set(lay.anchors))
        anchors.update(caught)
        if not self.spd_is_controller:
            self._spd_send_rows(link.stage, hidden, residual, anchors)
        elif self.spd_drafter.module is not None:
            if 0 in lay.anchors and 0 not in anchors:
                anchors[0] = self._spd_embed(chunk_ids())
            stack = torch.stack([anchors[k] for k in lay.anchors])
            types = torch.full((stack.shape[1],), lay.depth_to_type[-1], device=self.device)
            self.spd_drafter.prefill(chunks, stack, types)
        if self.spd_is_controller and self.num_prompt_logprobs:
            prompt_logprobs.update(self._spd_prompt_logprobs(work, chunks, hidden, residual))
        todo = [(w, c) for (w, c, f) in zip(work, chunks, finishing) if f]
        reqs = [self._spd_new_request(req_id, c.start + c.num_tokens) for (_, req_id, _), c in todo]
        tokens = None
        firsts = {}
        if self.spd_is_controller and todo:
            ends = torch.tensor([0] + [c.num_tokens for c in chunks]).cumsum(0)[1:] - 1
            rows = [int(ends[i]) for i, f in enumerate(finishing) if f]
            normed, _ = tm.norm(hidden[rows], residual[rows])
            raw, logits = self._spd_target_logits(normed, reqs)
            sampled = sample_target(logits, [r.sampling for r in reqs])
            firsts = self._spd_token_logprobs(reqs, raw, logits, sampled)
            tokens = sampled.tolist()
        if link is not None:
            tokens = link.broadcast_control(tokens, len(todo))
            link.wait_sends()
        committed = {}
        for row, (((idx, req_id, _), _), req, token) in enumerate(zip(todo, reqs, tokens or [])):
            req.pipe.newest.token = token
            self.spd_requests[req_id] = req
            committed[req_id] = self._spd_commit(idx, req, [token], firsts.get(row))
        return committed

    def _spd_prompt_logprobs(self, work, chunks, hidden, residual) -> dict:
        """vLLM's prompt logprobs for this step's prefill chunks (controller): the raw
        scores at each prompt position of the token that follows it, accumulated over
        chunks and handed out when the prompt is done (as vLLM's own runner does)."""
        from vllm.v1.outputs import LogprobsTensors

        from vllm_spd.engine import target_rules

        model = self.get_model()
        done = {}
        offset = 0
        for (idx, req_id, _), c in zip(work, chunks):
            start, num = c.start, c.num_tokens
            offset += num
            k = self.num_prompt_logprobs.get(req_id)
            prompt = self.requests[req_id].prompt_token_ids
            if k is None or prompt is None:
                continue
            state = self.requests[req_id]
            if state.in_progress_prompt_logprobs_cpu is None:
                state.in_progress_prompt_logprobs_cpu = LogprobsTensors.empty_cpu(len(prompt) - 1, k + 1)
            acc = state.in_progress_prompt_logprobs_cpu
            count = min(num, len(prompt) - 1 - start)
            if count > 0:
                rows = slice(offset - num, offset - num + count)
                normed, _ = model.model.norm(hidden[rows], residual[rows])
                # prompt tokens skip the sampler's processing: raw and processed modes agree
                scores = target_rules.logprob_scores(model.compute_logits(normed), None,
                                                     self.model_config.logprobs_mode, None)
                nxt = torch.tensor(prompt[start + 1:start + 1 + count], device=scores.device)
                ids, lps, ranks = target_rules.gather(scores, k, nxt)
                acc.logprob_token_ids[start:start + count].copy_(ids)
                acc.logprobs[start:start + count].copy_(lps)
                acc.selected_token_ranks[start:start + count].copy_(ranks)
            if start + num >= len(prompt):
                done[req_id] = acc
                del self.num_prompt_logprobs[req_id]
                state.in_progress_prompt_logprobs_cpu = None
        return done

    def _spd_token_logprobs(self, reqs, raw, processed, tokens) -> dict[int, tuple]:
        """Row -> (ids, logprobs, rank) of ``tokens`` for the rows whose request asked for
        logprobs, computed as vLLM's sampler does under the engine's logprobs mode."""
        rows = [r for r, req in enumerate(reqs) if req.rules is not None and req.rules.wants_logprobs]
        if not rows:
            return {}
        from vllm_spd.engine import target_rules
        from vllm_spd.engine.verdicts import row_params

        warp = row_params([reqs[r].sampling for r in rows], raw.device)
        warp.pop("generators")
        scores = target_rules.logprob_scores(raw[rows], processed[rows], self.model_config.logprobs_mode, warp)
        out = {}
        for i, r in enumerate(rows):
            rules, score, token = reqs[r].rules, scores[i:i + 1], tokens[r:r + 1].to(torch.int64)
            if rules.logprob_ids is not None:   # vLLM's own gather of given tokens
                got = self.sampler.gather_specific_token_logprobs(score, {0: rules.logprob_ids}, token)
            else:
                got = target_rules.gather(score, rules.num_logprobs, token)
            out[r] = tuple(t[0] for t in got[:3])
        return out

    def _spd_logprobs(self, req_ids):
        """This step's sample logprobs for vLLM's output (controller), or None."""
        rows, starts = [], []
        for r in req_ids:
            starts.append(len(rows))
            req = self.spd_requests.get(r)
            if req is not None:
                rows += req.logprob_rows
                req.logprob_rows = []
        if not rows:
            return None
        from vllm.v1.outputs import LogprobsLists

        width = max(int(ids.numel()) for ids, _, _ in rows)
        ids = np.zeros((len(rows), width), dtype=np.int32)
        lps = np.full((len(rows), width), float("-inf"), dtype=np.float32)
        for i, (a, b, _) in enumerate(rows):
            ids[i, : a.numel()] = a.cpu().numpy()
            lps[i, : b.numel()] = b.cpu().numpy()
        ranks = np.array([int(rank) for _, _, rank in rows], dtype=np.int64)
        return LogprobsLists(ids, lps, ranks, starts)

    def _spd_new_request(self, req_id: str, pos: int) -> SPDRequest:
        state = self.requests[req_id]
        sp = state.sampling_params
        req = SPDRequest(req_id, RequestPipeline(self.spd_cfg.pipeline_depth, -1, pos),
                         RequestSampling.from_params(sp, state.generator),
                         seed=sp.seed if sp.seed is not None else int(torch.randint(1 << 62, ())),
                         rules=TargetRules.from_params(sp, state.prompt_token_ids))
        stop = set(sp.stop_token_ids or ()) | ({sp.eos_token_id} if sp.eos_token_id is not None else set())
        req.gate = CommitGate(stop, sp.all_stop_token_ids, int(sp.min_tokens or 0),
                              int(sp.max_tokens or 1 << 62), len(state.output_token_ids))
        return req

    @property
    def spd_hidden_size(self) -> int:
        return self.model_config.hf_text_config.hidden_size

    @property
    def spd_dtype(self) -> torch.dtype:
        return self.model_config.dtype

    def _spd_stage_anchor_ids(self, stage: int) -> list[int]:
        """Anchors that ``stage``'s forward produces for the draft module: none without
        one, and never anchor 0 (the controller embeds the token itself)."""
        if self.spd_cfg.model is None:
            return []
        return [k for k in self.spd_layout.anchors_of_stage(stage) if k != 0]

    def _spd_send_rows(self, stage: int, hidden, residual, anchors: dict) -> None:
        """A non-controller stage's output, sent now (:meth:`_spd_outbound`)."""
        for tensor, to_stage, tag in self._spd_outbound(stage, hidden, residual, anchors):
            self.spd_link.send(tensor, to_stage, tag)

    def _spd_outbound(self, stage: int, hidden, residual, anchors: dict) -> list[tuple[torch.Tensor, int, int]]:
        """A non-controller stage's messages ``(tensor, to_stage, tag)``: its rows to the
        next stage and its anchors to the controller, in one message when the next stage
        is the controller (a message costs host time on both ends every cycle). No
        anchors: no anchor message. :meth:`_spd_inbound` is the receiving side."""
        link = self.spd_link
        ks = self._spd_stage_anchor_ids(stage)
        parts = [hidden, residual]
        if stage + 1 == link.controller:
            return [(torch.stack(parts + [anchors[k] for k in ks]), stage + 1, TAG_STAGE)]
        out = [(torch.stack(parts), stage + 1, TAG_STAGE)]
        if ks:
            out.append((torch.stack([anchors[k] for k in ks]), link.controller, TAG_ANCHORS))
        return out

    def _spd_inbound(self) -> list[tuple[int, int, list[int], bool]]:
        """What this rank receives per cycle (and per prefill step), the mirror of
        :meth:`_spd_send_rows`: ``(from_stage, tag, anchor ids, carries rows)``; a message
        holds the rows (hidden, residual) first when it carries them, then the anchors."""
        link = self.spd_link
        inbound = []
        if link.stage > 0:
            prev = link.stage - 1
            # From the stage before the controller, its anchors ride with its rows.
            inbound.append((prev, TAG_STAGE, self._spd_stage_anchor_ids(prev) if link.is_controller else [], True))
        if link.is_controller:
            for stage in range(link.controller - 1):
                ks = self._spd_stage_anchor_ids(stage)
                if ks:
                    inbound.append((stage, TAG_ANCHORS, ks, False))
        return inbound

    def _spd_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (anchor 0); the controller of an untied target keeps a copy."""
        if self.spd_embedding is not None:
            return torch.nn.functional.embedding(ids, self.spd_embedding)
        return self.get_model().model.embed_input_ids(ids)

    # -- decode cycles -----------------------------------------------------------------
    def _spd_decode(self, work, stats) -> dict[str, list[int]]:
        device = self._spd_device_cycle()
        if device is not None:
            if device.serves([self.spd_requests[r] for _, r, _ in work]):
                return device.run_step(work, stats)
            device.flush()   # the host cycle reads the requests' state on the host
        committed = {req_id: [] for _, req_id, _ in work}
        budget = {}
        limit = {}
        for idx, req_id, num_sched in work:
            # A grammar's mask is known for the committed frontier only: one commit a step.
            budget[req_id] = 1 if self.spd_requests[req_id].follows_grammar else num_sched
            blocks = len(self.requests[req_id].block_ids[0])
            limit[req_id] = min(self.max_model_len, blocks * self.cache_config.block_size)
            stats[req_id] = StepStats()
        index = {req_id: idx for idx, req_id, _ in work}
        link = self.spd_link
        timer = self.spd_timer
        for _ in range(self.spd_cfg.cycles_per_step):
            active = [self.spd_requests[r] for r in committed
                      if not self.spd_requests[r].gate.stopped and len(committed[r]) < budget[r]]
            if not active:
                break
            # Who runs what this cycle, decided before anything moves (same on every rank).
            plan = [(req, stage, e) for req in active for stage, e in req.pipe.stage_work(limit[req.req_id])]
            control = decision = None
            if link is not None:
                with timer.phase("hop"):
                    posted = self._spd_post_receives(plan)
                if not link.is_controller:
                    control = link.post_control(None, CONTROL_FIELDS * len(active))
            if self.spd_is_controller:
                # Drafts use features from before this cycle: gathered now, drafted once
                # the stage forward is queued (the draft module on its own stream).
                with timer.phase("draft"):
                    wants = [req.pipe.draft_pos < limit[req.req_id] for req in active]
                    launch_drafts = self.spd_drafter.begin(active, index, wants)
            with timer.phase("stage"):
                self._spd_run_stages(plan, index)
            if self.spd_is_controller:
                # Only now read last cycle's verdicts: reading them waits for this rank's
                # device to finish the previous cycle, and the stage is already queued
                # behind it, so the device does not idle while the host broadcasts and
                # prepares the next forward.
                decision, control = self._spd_decide(active, launch_drafts)
            if decision is None:   # the controller's decision arrives
                with timer.phase("control"):
                    drafts, verdicts = decode_control(control.wait())
                for req, draft in zip(active, drafts):
                    req.pipe.advance(draft)
            else:
                verdicts = decision[1]
            for req in active:
                stats[req.req_id].cycles += 1
            with timer.phase("commit"):
                self._spd_apply(active, verdicts, index, committed, stats)
            if self.spd_is_controller and self.spd_cfg.verdict_lag:
                with timer.phase("verify"):
                    self._spd_verify_ahead(active)
            if link is not None:
                with timer.phase("hop"):
                    self._spd_receive(posted)
                    if decision is not None:
                        control.wait()   # the controller's broadcast went out
            timer.cycle_done()
        return committed

    def _spd_run_stages(self, plan, index) -> None:
        lay = self.spd_layout
        tm = self.get_model().model
        link = self.spd_link
        for stage in self._spd_stages_here():
            first, last = lay.ranges[stage]
            work = [(req, e) for req, s, e in plan if s == stage]
            if not work:
                continue
            chunks = [Chunk(index[req.req_id], e.pos, 1) for req, e in work]
            if stage == 0:
                ids = to_device([e.token for _, e in work], self.device)
                hidden, residual = (tm.embed_input_ids(ids) if link is None else ids), None
            else:
                hidden = torch.stack([req.carry[e.pos][0] for req, e in work])
                residual = torch.stack([req.carry[e.pos][1] for req, e in work])
            capture = set(lay.anchors_of_stage(stage))
            if link is not None:
                hidden, residual, caught = self._spd_stage_forward(stage, work, chunks, hidden, residual)
            else:
                hidden, residual, caught = self.spd_slices.run_layers(
                    tm.layers, first, last, chunks, hidden, residual, capture)
            if link is not None and not link.is_controller:
                self._spd_send_rows(stage, hidden, residual, caught)
                continue
            if stage == 0 and 0 in capture:
                caught[0] = self._spd_embed(ids)
            for row, (req, e) in enumerate(work):
                req.carry[e.pos] = (hidden[row], None if residual is None else residual[row])
                if self.spd_drafter.module is not None:
                    req.anchors.setdefault(e.pos, {}).update({k: v[row] for k, v in caught.items()})

    def _spd_stage_forward(self, stage, work, chunks, hidden, residual):
        """This rank's stage on one token per row via the model forward. Returns
        ``(hidden, residual, anchors)``; on the last stage ``hidden`` is already through
        the final norm and ``residual`` is None."""
        n = len(work)
        names = self.spd_stage_layer_names
        if stage == 0:
            self.input_ids.gpu[:n].copy_(hidden, non_blocking=True)   # token ids
            out = self.spd_slices.run_model(chunks, names, input_ids=self.input_ids.gpu)
        else:
            buf = self._spd_intermediate_buffer()
            buf["hidden_states"][:n].copy_(hidden)
            buf["residual"][:n].copy_(residual)
            out = self.spd_slices.run_model(chunks, names, intermediate=buf)
        ks = self.spd_stage_anchors
        if self.spd_link.is_controller:
            normed, aux = out if ks else (out, [])
            return normed[:n].clone(), None, {k: a[:n].clone() for k, a in zip(ks, aux)}
        key = self.get_model().model.AUX_HIDDEN_STATE_KEY
        anchors = {k: out[f"{key}{i}"][:n] for i, k in enumerate(ks)}
        return out["hidden_states"][:n], out["residual"][:n], anchors

    def _spd_intermediate_buffer(self):
        if getattr(self, "intermediate_tensors", None) is None:
            self.intermediate_tensors = self.get_model().make_empty_intermediate_tensors(
                batch_size=self.max_num_tokens, dtype=self.spd_dtype, device=self.device)
        return self.intermediate_tensors

    def _spd_post_receives(self, plan) -> list:
        """Post this cycle's receives (:meth:`_spd_inbound`) first thing in the cycle:
        stage s gets what stage s-1 runs this cycle (its work next cycle), the
        controller the anchors of every stage. Both ends know the row counts from the
        plan. On NCCL a receive waits for the work already queued on this rank's stream
        when it is posted; posted before this rank's stage forward, it does not wait for
        that forward, and so neither does the sender's stream (which waits for its send
        to complete before its next cycle)."""
        link = self.spd_link
        posted = []
        for src, tag, ks, carries in self.spd_inbound:
            rows = [(req, e) for req, s, e in plan if s == src]
            if rows:
                shape = (2 * carries + len(ks), len(rows), self.spd_hidden_size)
                posted.append((rows, carries, ks, *link.post_recv(shape, self.spd_dtype, src, tag)))
        return posted

    def _spd_receive(self, posted) -> None:
        """After the verdicts: take in the posted receives; rows of tokens the cycle's
        verdicts dropped are discarded."""
        def alive(req, e):
            return any(x is e for x in req.pipe.window)

        for rows, carries, ks, x, work in posted:
            work.wait()
            if carries:
                for row, (req, e) in enumerate(rows):
                    if alive(req, e):
                        req.carry[e.pos] = (x[0, row], x[1, row])
                x = x[2:]
            for row, (req, e) in enumerate(rows):
                if ks and alive(req, e):
                    req.anchors.setdefault(e.pos, {}).update({k: x[a, row] for a, k in enumerate(ks)})
        self.spd_link.wait_sends()

    def _spd_judge(self, active) -> list[tuple[bool, int] | None]:
        """Controller: the verdict on every completing token's successor; None where
        nothing completes. With ``verdict_lag`` 1 they were queued a cycle ago
        (:meth:`_spd_verify_ahead`) and are only read here."""
        done = [(req, req.pipe.completing()) for req in active]
        done = [(req, e) for req, e in done if e is not None]
        verdicts: dict[str, tuple[bool, int]] = {}
        # Queued a cycle early, or (no lag; a grammar's mask, known for the frontier only)
        # verified now, as they complete.
        queued = [(req, e) for req, e in done if self._spd_verifies_ahead(req)]
        now = [(req, e) for req, e in done if not self._spd_verifies_ahead(req)]
        for req, e in queued:
            if req.early is None or req.early[0] is not e:
                raise RuntimeError(f"spd: no verdict was queued for request {req.req_id} at position {e.pos}")
            verdicts[req.req_id] = req.early[1].read(req.early[2])
            req.verdict_logprobs = req.early[1].read_logprobs(req.early[2])
            req.early = None
        if now:
            result = self._spd_verify(now)
            for row, (req, _) in enumerate(now):
                verdicts[req.req_id] = result.read(row)
                req.verdict_logprobs = result.read_logprobs(row)
        return [verdicts.get(req.req_id) for req in active]

    def _spd_verifies_ahead(self, req: SPDRequest) -> bool:
        """Whether ``req``'s verdicts are queued a cycle before they are read
        (``verdict_lag`` 1), which a grammar request's cannot be."""
        return bool(self.spd_cfg.verdict_lag) and not req.follows_grammar

    def _spd_verify_ahead(self, active) -> None:
        """Controller, ``verdict_lag`` 1, after this cycle's verdicts took effect: queue
        the verification of the tokens that left the last stage this cycle (read next
        cycle, when they complete), so neither this cycle's broadcast nor the next
        cycle's stage waits for it."""
        left = [(req, e) for req in active if not req.gate.stopped and self._spd_verifies_ahead(req)
                for e in req.pipe.window if e.depth == self.spd_layout.num_stages]
        if left:
            queued = self._spd_verify(left)
            for row, (req, e) in enumerate(left):
                req.early = (e, queued, row)

    def _spd_verify(self, pairs) -> Verdicts:
        """Queue the verification of each ``(req, e)``: the target's distribution after
        ``e`` (from its final hidden state) against the draft that follows it: accepted
        (0/1) and the committed token per pair, with logprobs where asked for."""
        model = self.get_model()
        # Final-normed rows: across ranks the last stage's model forward applied the norm.
        normed = [req.carry[e.pos][0] for req, e in pairs]
        if self.spd_link is None:
            residual = torch.stack([req.carry[e.pos][1] for req, e in pairs])
            normed, _ = model.model.norm(torch.stack(normed), residual)
        reqs = [req for req, _ in pairs]
        cands = [req.pipe.successor(e) for req, e in pairs]
        drafts = [c.token if c is not None else -1 for c in cands]
        graphs = self._spd_verify_graphs()
        if graphs is not None and graphs.fits(len(pairs)) and \
                all(req.sampling.greedy and not req.gate.masks_stop_tokens and req.rules is None for req in reqs):
            return Verdicts(graphs.verify(normed, drafts))
        if isinstance(normed, list):
            normed = torch.stack(normed)
        raw, logits = self._spd_target_logits(normed, reqs)
        qs = [req.draft_q.get(c.pos) if c is not None else None for req, c in zip(reqs, cands)]
        accepted, tokens = verify_drafts(logits, drafts, qs, [req.sampling for req in reqs], self.spd_drafter.vocab)
        return Verdicts(torch.stack([accepted.to(tokens.dtype), tokens]),
                        self._spd_token_logprobs(reqs, raw, logits, tokens))

    def _spd_verify_graphs(self):
        """Greedy verification's fixed-shape path (``verify_graphs.py``): captured on a
        GPU by :meth:`capture_model`, run eagerly on CPU; None where it is off."""
        if not hasattr(self, "spd_verify_graphs"):
            from vllm_spd import envs
            from vllm_spd.engine.verify_graphs import VerifyGraphs

            cpu = self.device.type != "cuda" and envs.verify_graphs()
            self.spd_verify_graphs = VerifyGraphs.for_runner(self) if cpu else None
        return self.spd_verify_graphs

    def capture_model(self):
        """vLLM's graphs, then the draft module's and verification's (on the controller,
        where supported), then the device cycle's (one worker, or this rank's part)."""
        size = self.spd_drafter.capture(super().capture_model())
        if self.spd_is_controller:
            from vllm_spd.engine.verify_graphs import VerifyGraphs, graphs_supported

            size = self._spd_capture_graphs(size, "verification", graphs_supported, VerifyGraphs.for_runner,
                                            "spd_verify_graphs")
        from vllm_spd.engine import device_cycle

        return self._spd_capture_graphs(size, "the device cycle", device_cycle.graphs_supported,
                                        device_cycle.DeviceCycle, "spd_device")

    def _spd_capture_graphs(self, size, what: str, supported, make, attr: str, owner=None):
        """Capture one of SPD's own graph sets after vLLM's: where ``supported(self)``
        allows it, ``make(self).capture()`` is kept as ``<owner>.<attr>`` (``owner``: the
        runner unless given) and the device memory it took is added to ``size`` (vLLM's
        figure for its graphs); otherwise ``what`` runs eagerly, and the log says why."""
        ok, why = supported(self)
        if not ok:
            logger.info("spd: %s runs eagerly (%s)", what, why)
            return size
        free = torch.cuda.mem_get_info(self.device)[0]
        graphs = make(self)
        graphs.capture()
        setattr(self if owner is None else owner, attr, graphs)
        return (size or 0) + max(0, free - torch.cuda.mem_get_info(self.device)[0])

    def _spd_device_cycle(self):
        """The device-resident cycle (``device_cycle.py``): captured on a GPU by
        :meth:`capture_model`, eager on CPU; None where it is off."""
        if not hasattr(self, "spd_device"):
            from vllm_spd.engine import device_cycle

            # Not captured on a GPU: one worker takes the host-driven cycle, pipeline ranks
            # run the device cycle eagerly (every rank decides the same from the configuration).
            ok = device_cycle.applies(self) and (self.device.type != "cuda" or self.spd_link is not None)
            self.spd_device = device_cycle.DeviceCycle(self) if ok else None
        return self.spd_device

    def _spd_decide(self, active, launch_drafts):
        """Controller: this cycle's drafts (from ``launch_drafts``, see
        :meth:`~vllm_spd.drafters.drafting.Drafter.begin`) enter the pipelines and the completing
        tokens' verdicts are read; with other ranks, the broadcast of both starts. Returns
        ``((drafts, verdicts), control)``."""
        timer = self.spd_timer
        with timer.phase("draft"):
            drafts = launch_drafts()()
        for req, draft in zip(active, drafts):
            req.pipe.advance(draft)
        with timer.phase("verify"):
            verdicts = self._spd_judge(active)
        control = None
        if self.spd_link is not None:
            values = encode_control(drafts, verdicts)
            with timer.phase("control"):
                control = self.spd_link.post_control(values, len(values))
        return (drafts, verdicts), control

    def _spd_apply(self, active, verdicts, index, committed, stats) -> None:
        """Every rank: resolve the verdicts, drop what a flush killed, commit."""
        for req, verdict in zip(active, verdicts):
            if verdict is None:
                continue
            e = req.pipe.completing()
            st = stats[req.req_id]
            outcome = req.pipe.resolve(*verdict)
            st.verified += int(outcome.verified)
            st.accepted += int(outcome.accepted)
            # The finished token's full-depth row goes to the draft module next cycle.
            req.carry.pop(e.pos, None)
            req.pending = e.pos
            # After a flush the token at e.pos+1 is a new one: nothing of the dropped
            # tokens (hidden states, anchors, draft q) may survive, position-keyed or not.
            keep = (lambda p: p == e.pos) if not outcome.accepted else \
                (lambda p: p == e.pos or any(x.pos == p for x in req.pipe.window))
            for d in (req.carry, req.anchors, req.draft_q):
                for pos in [p for p in d if not keep(p)]:
                    del d[pos]
            committed[req.req_id] += self._spd_commit(index[req.req_id], req, outcome.committed,
                                                      req.verdict_logprobs)
            req.verdict_logprobs = None
            st.committed += len(outcome.committed)

    @staticmethod
    def _spd_apply_min_tokens(logits: torch.Tensor, reqs: list[SPDRequest]) -> None:
        """vLLM masks stop tokens until min_tokens outputs exist; so does the target here."""
        for row, req in enumerate(reqs):
            if req.gate.masks_stop_tokens:
                logits[row, list(req.gate.mask_ids)] = float("-inf")

    def _spd_commit(self, idx: int, req: SPDRequest, tokens: list[int], logprobs=None) -> list[int]:
        """Record committed tokens in vLLM's persistent batch; stop at a stop token.
        ``logprobs``: the row of the one token committed, where its request asked."""
        batch = self.input_batch
        kept = req.gate.admit(tokens)
        if kept:
            start = int(batch.num_tokens_no_spec[idx])
            end = min(start + len(kept), self.max_model_len)
            kept = kept[: end - start]
            if kept and logprobs is not None:
                req.logprob_rows.append(logprobs)
            batch.token_ids_cpu[idx, start:end] = kept
            batch.is_token_ids[idx, start:end] = True
            batch.num_tokens_no_spec[idx] = end
            self.requests[req.req_id].output_token_ids.extend(kept)
        return kept

def build_runner_class(base):
    """An SPD runner class on top of vLLM's ``base`` runner class."""

    class SPDModelRunner(SPDRunnerMixin, base):
        def __init__(self, vllm_config, device):
            spec = vllm_config.speculative_config
            # The base runner must not see the spd config: it would try to build one of
            # vLLM's own drafters and reserve 1+k-token decode shapes.
            vllm_config.speculative_config = None
            try:
                super().__init__(vllm_config, device)
            finally:
                vllm_config.speculative_config = spec
            self._spd_setup(spec)

    SPDModelRunner.__name__ = SPDModelRunner.__qualname__ = f"SPD{base.__name__}"
    return SPDModelRunner
