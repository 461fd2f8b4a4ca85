"""The draft module's greedy decode forward at fixed shapes, replayed from CUDA graphs.

Every cycle the controller runs the draft module on up to ``q = pipeline_depth + 1``
rows per request (the finished token and the in-flight ones; ``pipeline_depth`` is
``num_stages + verdict_lag``): the cross-depth aggregation, the
draft layers over the paged KV cache and the fused draft head. Run eagerly that is
dozens of kernel launches and a few milliseconds of Python per cycle, on the path from
one cycle's verdict to the next cycle's drafts. :class:`DraftGraphs` runs the same
computation from persistent input buffers:

- the rows' anchors, types and the index of each request's last row go into buffers
  of their own; the attention metadata into :class:`~vllm_spd.engine.staged.GraphBuffers`;
- on a GPU the rows are padded to ``batch * q`` tokens that belong to no request (no
  query, no KV slot, position 0), and the metadata states the fixed upper bounds
  ``max_query_len = q`` and ``max_seq_len = max_model_len``, so a
  graph captured once per batch size replays for every cycle of that batch size with
  the same kernel choices;
- the attention layers' metadata is built before each replay by the draft module's own
  builders (which keep FlashAttention's scheduler metadata in persistent memory).

On CPU nothing is padded or captured: the same static path runs eagerly (what the CPU
tests check). Sampled drafting (temperature > 0) stays on the eager path.
"""

from __future__ import annotations

import logging

import torch

from vllm_spd.engine.staged import Chunk, GraphBuffers, HostMetadata, to_device

logger = logging.getLogger("vllm_spd")

#: Largest decode batch (requests) with a captured draft graph; larger batches draft eagerly.
MAX_GRAPH_BATCH = 16


class DraftGraphs:
    def __init__(self, runner, max_batch: int | None = None):
        pdm = runner.spd_pdm
        lay = runner.spd_layout
        self.runner = runner
        self.pdm = pdm
        self.slices = runner.spd_slices
        self.rows_per_request = runner.spd_cfg.pipeline_depth + 1
        self.pad = runner.device.type == "cuda"
        max_seqs = runner.scheduler_config.max_num_seqs
        if max_batch is None:   # graphs are made per batch size; without them any batch fits
            max_batch = MAX_GRAPH_BATCH if self.pad else max_seqs
        self.max_batch = max(1, min(max_batch, max_seqs))
        self.max_seq_len = runner.max_model_len
        dev = runner.device
        max_rows = self.max_batch * self.rows_per_request
        blocks = runner.input_batch.block_table[0].get_cpu_tensor().shape[1]
        self.bufs = GraphBuffers.allocate(self.max_batch, max_rows, blocks, dev)
        self.stack = torch.zeros(lay.num_types, max_rows, runner.spd_hidden_size, dtype=pdm.lm_head.dtype,
                                 device=dev)
        self.types = torch.zeros(max_rows, dtype=torch.int64, device=dev)
        self.last = torch.zeros(self.max_batch, dtype=torch.int64, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def fits(self, chunks: list[Chunk]) -> bool:
        return len(chunks) <= self.max_batch and all(c.num_tokens <= self.rows_per_request for c in chunks)

    def num_rows(self, chunks: list[Chunk]) -> int:
        """Tokens the forward runs on: padded on a GPU, the real rows elsewhere."""
        return len(chunks) * self.rows_per_request if self.pad else sum(c.num_tokens for c in chunks)

    def stage(self, chunks: list[Chunk], where: list[tuple[int, int, torch.Tensor]], types: list[int]) -> None:
        """The rows' inputs into the persistent buffers, on the current stream (where the
        anchors are final): anchor ``a`` of row ``r`` for each ``(a, r, tensor)``, the
        rows' types, and each request's last row."""
        dev = self.runner.device
        if where:
            at = to_device([(a, r) for a, r, _ in where], dev).T
            self.stack[at[0], at[1]] = torch.stack([v for _, _, v in where]).to(self.stack.dtype)
        self.types[: len(types)].copy_(torch.tensor(types), non_blocking=True)
        ends = torch.tensor([c.num_tokens for c in chunks]).cumsum(0) - 1
        self.last[: len(chunks)].copy_(ends, non_blocking=True)

    def draft(self, chunks: list[Chunk]) -> torch.Tensor:
        """Greedy draft ids (full vocabulary), one per chunk, from the staged rows: the
        metadata is written and built here, then the graph of this batch size replays
        (or, without one, the same forward runs eagerly). Call on the stream the
        draft module runs on."""
        b, rows = len(chunks), self.num_rows(chunks)
        meta = self._write(self.slices._host_metadata(chunks, num_tokens=rows))
        if b in self.graphs:
            graph, ids = self.graphs[b]
            graph.replay()
            return ids
        return self._forward(b, rows, meta)

    def _write(self, host: HostMetadata):
        """The metadata into the persistent buffers; returns ``(attn, slots)`` per layer."""
        return self.slices.write_metadata(host, self.bufs, self.pdm.attention_layer_names,
                                          max_query_len=self.rows_per_request, max_seq_len=self.max_seq_len)

    def _forward(self, b: int, rows: int, meta) -> torch.Tensor:
        from vllm.forward_context import set_forward_context

        pdm = self.pdm
        attn, slots = meta
        with set_forward_context(attn, self.runner.vllm_config, num_tokens=rows, slot_mapping=slots):
            x = pdm.aggregate(self.stack[:, :rows], self.types[:rows])
            hidden, residual = pdm(self.bufs.positions[:rows], x)
        last = self.last[:b]
        return pdm.draft_greedy(hidden[last], residual[last])

    @torch.inference_mode()
    def capture(self) -> None:
        """One graph per batch size 1..max_batch, largest first (smaller ones reuse its
        memory pool). Capture inputs write no KV (slot -1) and read only the null block."""
        import numpy as np

        q = self.rows_per_request
        pool = torch.cuda.graph_pool_handle()
        for b in range(self.max_batch, 0, -1):
            rows = b * q
            host = HostMetadata(qsl=np.arange(b + 1, dtype=np.int32) * q, seq_lens=np.full(b, q, dtype=np.int32),
                                positions=np.tile(np.arange(q, dtype=np.int64), b),
                                table=torch.zeros(b, self.bufs.block_table.shape[1], dtype=torch.int32),
                                slots=np.full(rows, -1, dtype=np.int64), max_query_len=q)
            meta = self._write(host)
            self.last[:b] = torch.arange(b, device=self.last.device) * q + q - 1
            self._forward(b, rows, meta)           # compiles and autotunes outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                ids = self._forward(b, rows, meta)
            self.graphs[b] = (graph, ids)
        torch.cuda.synchronize()
        logger.info("spd: captured draft-module CUDA graphs for batch sizes 1..%d", self.max_batch)


def graphs_supported(runner) -> tuple[bool, str]:
    """Whether the draft module's forward may be captured: a GPU, full CUDA graphs in
    vLLM's compilation config, and attention backends whose metadata replays in full
    graphs for any batch (FlashAttention 3: ``AttentionCGSupport.ALWAYS``)."""
    from vllm_spd import envs

    if runner.device.type != "cuda":
        return False, "not a CUDA device"
    if not envs.draft_graphs():
        return False, f"{envs.DRAFT_GRAPHS_VAR}=0"
    if runner.model_config.enforce_eager or not runner.compilation_config.cudagraph_mode.has_full_cudagraphs():
        return False, "vLLM runs without full CUDA graphs"
    from vllm.v1.attention.backend import AttentionCGSupport

    names = set(runner.spd_pdm.attention_layer_names)
    for group in runner.spd_slices._attention_groups():
        if names & set(group.layer_names):
            builder = group.get_metadata_builder()
            support = builder.get_cudagraph_support(runner.vllm_config, group.kv_cache_spec)
            if support != AttentionCGSupport.ALWAYS:
                return False, f"{type(builder).__name__} supports {support.name}, not ALWAYS"
    return True, ""
