"""Scheduler subclass: SPD's per-step commit accounting, acceptance stats, log line.

Each decoding request is scheduled ``1 + (C-1)`` tokens per step (C = cycles per
step): the placeholder draft slots let the worker commit 1..C tokens, and vLLM's
stock rollback (``num_computed_tokens -= rejected``) keeps the committed frontier.
The worker reports per request how many drafts it verified and accepted; those feed
vLLM's spec-decode counters, so acceptance rate there is SPD's per-draft alpha.
"""

from __future__ import annotations

import logging
import time

from vllm.v1.core.sched.scheduler import Scheduler

logger = logging.getLogger("vllm_spd")

PLACEHOLDER = -1


class SPDScheduler(Scheduler):
    def __init__(self, vllm_config, *args, **kwargs):
        super().__init__(vllm_config, *args, **kwargs)
        spec = vllm_config.speculative_config
        self.spd_placeholders = spec.cycles_per_step - 1
        # In-flight tokens run up to pipeline_depth positions past the committed frontier.
        self.num_lookahead_tokens = max(self.num_lookahead_tokens, spec.pipeline_depth)
        self.spd_log_interval = spec.log_interval_s
        self._spd_step_stats: dict = {}
        self._spd_totals = [0, 0, 0, 0]  # cycles, verified, accepted, committed
        self._spd_last_log = time.monotonic()

    def schedule(self, *args, **kwargs):
        for request in self.running:
            # A request past its prompt decodes: give it room to commit C tokens.
            if request.num_output_tokens > 0 and request.num_computed_tokens >= request.num_tokens - 1:
                request.spec_token_ids = [PLACEHOLDER] * self.spd_placeholders
        return super().schedule(*args, **kwargs)

    def update_from_output(self, scheduler_output, model_runner_output):
        self._spd_step_stats = getattr(model_runner_output, "spd_stats", None) or {}
        for cycles, verified, accepted, committed in self._spd_step_stats.values():
            for i, v in enumerate((cycles, verified, accepted, committed)):
                self._spd_totals[i] += v
        self._spd_maybe_log()
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for request in self.running:
            # A decoding request that committed nothing this step (the worker never
            # does that for one it was asked to advance, but a stale output could)
            # must not keep its optimistic frontier, or it would never be scheduled again.
            if request.num_output_tokens > 0 and request.num_computed_tokens > request.num_tokens - 1:
                request.num_computed_tokens = request.num_tokens - 1
        return outputs

    def make_spec_decoding_stats(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                 num_invalid_spec_tokens, request_id):
        """One draft per verification (not per placeholder): acceptance rate = alpha."""
        if not self.log_stats:
            return None
        _, verified, accepted, _ = self._spd_step_stats.get(request_id, (0, 0, 0, 0))
        if not verified:
            return spec_decoding_stats
        if spec_decoding_stats is None:
            from vllm.v1.spec_decode.metrics import SpecDecodingStats

            spec_decoding_stats = SpecDecodingStats.new(self.num_spec_tokens)
        for i in range(verified):
            spec_decoding_stats.observe_draft(num_draft_tokens=1, num_accepted_tokens=int(i < accepted))
        return spec_decoding_stats

    def _spd_maybe_log(self) -> None:
        now = time.monotonic()
        if not self.spd_log_interval or now - self._spd_last_log < self.spd_log_interval:
            return
        cycles, verified, accepted, committed = self._spd_totals
        if cycles:
            logger.info("spd: alpha=%.3f (%d/%d drafts accepted), %.2f tokens/cycle over %d cycles",
                        accepted / max(verified, 1), accepted, verified, committed / cycles, cycles)
        self._spd_last_log = now
