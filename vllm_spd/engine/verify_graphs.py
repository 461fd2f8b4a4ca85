"""Greedy verification at fixed shapes, replayed from CUDA graphs (on the controller).

Every cycle the controller verifies the tokens that complete: their final hidden rows
go through the LM head, and the argmax is compared with the draft that follows each.
Run eagerly that is about fifteen kernel launches and their Python on the controller's
host, every cycle. The host is what a cycle waits for once stages are short: in a
profiled n=2 step on 2x H200 the controller's host was busy about 2.5 ms per 2.7 ms
cycle, 0.5 ms of it queueing this verification
(``benchmarks/results/profiles/spd_n2_h200_lag1_trace_rank1.json.gz``). With n=4 the
stages take about 1.3 ms, so that host time sets the cycle. :class:`VerifyGraphs` runs
the same computation from persistent buffers:

- the rows' hidden states and draft ids are copied into buffers of their own;
- on a GPU one graph per row count ``1..max_rows`` (captured after vLLM's) runs the LM
  head, the argmax and the comparison, and writes ``[2, rows]``: accepted (0/1) and the
  committed token.

Exactly what the eager greedy path computes: the argmax over the logits in the
model's dtype is the argmax over their float32 copy (the cast is exact and keeps the
order), and the committed token is that argmax whether the draft was accepted (then
they are equal) or not. Only all-greedy batches without masked stop tokens
(``min_tokens``) take this path; others verify eagerly. On CPU nothing is captured:
the same fixed-shape path runs eagerly (what the CPU tests check).
"""

from __future__ import annotations

import logging

import torch

from vllm_spd.engine.draft_graphs import MAX_GRAPH_BATCH

logger = logging.getLogger("vllm_spd")


class VerifyGraphs:
    def __init__(self, model, hidden_size: int, dtype: torch.dtype, device: torch.device, max_rows: int):
        #: anything with ``compute_logits(hidden [rows, H]) -> logits [rows, V]``
        self.model = model
        self.max_rows = max(1, max_rows)
        self.hidden = torch.zeros(self.max_rows, hidden_size, dtype=dtype, device=device)
        self.drafts = torch.full((self.max_rows,), -1, dtype=torch.int64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @classmethod
    def for_runner(cls, runner) -> "VerifyGraphs":
        on_gpu = runner.device.type == "cuda"
        max_seqs = runner.scheduler_config.max_num_seqs
        return cls(runner.get_model(), runner.spd_hidden_size, runner.spd_dtype, runner.device,
                   min(MAX_GRAPH_BATCH, max_seqs) if on_gpu else max_seqs)

    def fits(self, rows: int) -> bool:
        return rows <= self.max_rows

    def verify(self, hidden, drafts: list[int]) -> torch.Tensor:
        """``[2, rows]`` on the device: accepted (0/1) and the committed token, for the
        final (normed) hidden states ``hidden`` (a ``[rows, H]`` tensor or a list of
        ``[H]`` rows) and the draft after each (-1: nothing to verify). The result of a
        replayed graph is its own output buffer: read it (copy it) before the next
        verification of as many rows."""
        n = len(drafts)
        if isinstance(hidden, torch.Tensor):
            self.hidden[:n].copy_(hidden)
        else:
            torch.stack(hidden, out=self.hidden[:n])
        self.drafts[:n].copy_(torch.tensor(drafts, dtype=torch.int64), non_blocking=True)
        if n in self.graphs:
            graph, out = self.graphs[n]
            graph.replay()
            return out
        return self._forward(n)

    def _forward(self, n: int) -> torch.Tensor:
        best = self.model.compute_logits(self.hidden[:n]).argmax(dim=-1)
        drafts = self.drafts[:n]
        accepted = (best == drafts) & (drafts >= 0)
        return torch.stack([accepted.to(best.dtype), best])

    @torch.inference_mode()
    def capture(self) -> None:
        """One graph per row count, largest first (smaller ones reuse its memory pool)."""
        pool = torch.cuda.graph_pool_handle()
        for n in range(self.max_rows, 0, -1):
            self._forward(n)                      # warm up outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(n)
            self.graphs[n] = (graph, out)
        torch.cuda.synchronize()
        logger.info("spd: captured verification CUDA graphs for 1..%d rows", self.max_rows)


def graphs_supported(runner) -> tuple[bool, str]:
    """Whether verification may be captured: a GPU, graphs not switched off, vLLM not
    eager, and the LM head whole on this rank (no tensor-parallel gather of logits)."""
    from vllm_spd import envs

    if runner.device.type != "cuda":
        return False, "not a CUDA device"
    if not envs.verify_graphs():
        return False, f"{envs.VERIFY_GRAPHS_VAR}=0"
    if runner.model_config.enforce_eager:
        return False, "vLLM runs eagerly"
    if runner.parallel_config.tensor_parallel_size > 1:
        return False, "the LM head is split over tensor-parallel ranks"
    return True, ""
