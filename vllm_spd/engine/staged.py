"""Run slices of decoder layers over vLLM's paged KV cache, with per-slice metadata.

Every SPD stage works on a different token of a request each cycle, so each slice of
layers needs attention metadata of its own (the token's position, sequence length and
KV slot). :class:`SliceRunner` builds that metadata from the runner's block tables and
runs layers under vLLM's forward context. A slice is described by :class:`Chunk`s:
``num_tokens`` consecutive positions of one request starting at ``start`` (1 for a
stage token, several for a prefill chunk or the draft module's rows).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


def to_device(values, device, dtype=torch.int64) -> torch.Tensor:
    """A host list on ``device`` without synchronising the stream: a copy from pageable
    memory has read its source when it returns (``torch.tensor(..., device=...)``
    waits for everything queued on the stream first)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _replan(plan, buf: torch.Tensor) -> None:
    buf.copy_(plan())


@dataclass
class Chunk:
    req_index: int    # row in the runner's input batch (block table row)
    start: int        # first position
    num_tokens: int


class SliceRunner:
    """Builds attention metadata and runs layer slices for one model runner."""

    def __init__(self, runner, layer_names: dict[int, str], extra_layer_names: list[str] = ()):
        self.runner = runner
        self.device = runner.device
        self.block_size = runner.cache_config.block_size
        #: decoder layer index -> attention layer name, e.g. 3 -> "model.layers.3.self_attn.attn"
        self.layer_names = layer_names
        self.extra_layer_names = list(extra_layer_names)

    # -- metadata ---------------------------------------------------------------
    def _host_metadata(self, chunks: list[Chunk], num_reqs: int | None = None,
                       num_tokens: int | None = None) -> "HostMetadata":
        """The metadata of ``chunks`` on the host, padded to ``num_reqs`` requests (no
        query, no sequence, null block) and ``num_tokens`` tokens (outside every request:
        position 0, no KV slot), the way vLLM pads a batch for a CUDA graph."""
        n = len(chunks)
        num_reqs = n if num_reqs is None else num_reqs
        counts = np.array([c.num_tokens for c in chunks], dtype=np.int32)
        starts = np.array([c.start for c in chunks], dtype=np.int64)
        total = int(counts.sum())
        num_tokens = max(total, num_tokens or 0)
        qsl = np.full(num_reqs + 1, total, dtype=np.int32)
        qsl[0] = 0
        np.cumsum(counts, out=qsl[1: n + 1])
        seq_lens = np.zeros(num_reqs, dtype=np.int32)
        seq_lens[:n] = starts + counts
        positions = np.zeros(num_tokens, dtype=np.int64)
        positions[:total] = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, counts)])
        table = self.runner.input_batch.block_table[0].get_cpu_tensor()[[c.req_index for c in chunks]]
        slots = np.full(num_tokens, -1, dtype=np.int64)
        slots[:total] = self._slot_ids(table, np.repeat(np.arange(n), counts), positions[:total])
        return HostMetadata(qsl, seq_lens, positions, table, slots, int(counts.max()))

    def _common_metadata(self, chunks: list[Chunk], pad_to: int | None = None):
        """Per-call metadata in fresh device tensors (tokens padded to ``pad_to``)."""
        from vllm.v1.attention.backend import CommonAttentionMetadata

        host = self._host_metadata(chunks, num_tokens=pad_to)
        total = int(host.qsl[-1])
        dev = self.device
        qsl_cpu = torch.from_numpy(host.qsl)
        cm = CommonAttentionMetadata(
            query_start_loc=qsl_cpu.to(dev, non_blocking=True),
            query_start_loc_cpu=qsl_cpu,
            seq_lens=torch.from_numpy(host.seq_lens).to(dev, non_blocking=True),
            num_reqs=len(chunks),
            num_actual_tokens=total,
            max_query_len=host.max_query_len,
            max_seq_len=host.max_seq_len,
            block_table_tensor=host.table.to(dev, non_blocking=True),
            slot_mapping=torch.from_numpy(host.slots).to(dev, non_blocking=True),
            causal=True,
        )
        return cm, torch.from_numpy(host.positions[:total]).to(dev, non_blocking=True)

    def write_metadata(self, host: "HostMetadata", bufs: "GraphBuffers", layer_names: list[str],
                       max_query_len: int | None = None, max_seq_len: int | None = None):
        """Write ``host`` into the persistent buffers ``bufs`` (what a CUDA graph reads)
        and build each layer's metadata over them. ``max_query_len`` / ``max_seq_len``
        default to the batch's own; a graph replayed over batches of different lengths
        passes fixed upper bounds, so that capture and replay make the same launch
        decisions. Copies come from pageable memory: a copy has read its source when
        it returns, so the host arrays may be rewritten while this one is queued."""
        from vllm.v1.attention.backend import CommonAttentionMetadata

        num_reqs, num_tokens = len(host.seq_lens), len(host.positions)
        n = len(host.table)
        bufs.query_start_loc[: num_reqs + 1].copy_(torch.from_numpy(host.qsl), non_blocking=True)
        bufs.seq_lens[:num_reqs].copy_(torch.from_numpy(host.seq_lens), non_blocking=True)
        bufs.positions[:num_tokens].copy_(torch.from_numpy(host.positions), non_blocking=True)
        bufs.block_table[:n].copy_(host.table, non_blocking=True)
        if num_reqs > n:
            bufs.block_table[n:num_reqs].fill_(0)   # vLLM's null block for padded requests
        bufs.slot_mapping[:num_tokens].copy_(torch.from_numpy(host.slots), non_blocking=True)
        cm = CommonAttentionMetadata(
            query_start_loc=bufs.query_start_loc[: num_reqs + 1],
            query_start_loc_cpu=torch.from_numpy(host.qsl),
            seq_lens=bufs.seq_lens[:num_reqs],
            num_reqs=num_reqs,
            num_actual_tokens=num_tokens,
            max_query_len=host.max_query_len if max_query_len is None else max_query_len,
            max_seq_len=host.max_seq_len if max_seq_len is None else max_seq_len,
            block_table_tensor=bufs.block_table[:num_reqs],
            slot_mapping=bufs.slot_mapping[:num_tokens],
            causal=True,
        )
        return self._per_layer(cm, layer_names)

    def _slot_ids(self, table: torch.Tensor, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """KV slot of each token: its row of block table ``table`` at ``positions``."""
        blocks = table.numpy()[rows, positions // self.block_size]
        return blocks.astype(np.int64) * self.block_size + positions % self.block_size

    def metadata_for(self, chunks: list[Chunk], layer_names: list[str], pad_to: int | None = None):
        """Per-layer attention metadata and slot mappings for ``chunks``."""
        cm, positions = self._common_metadata(chunks, pad_to)
        return (*self._per_layer(cm, layer_names), positions)

    def device_metadata(self, layer_names: list[str], query_start_loc, seq_lens, block_table, slot_mapping,
                        max_query_len: int, max_seq_len: int):
        """Per-layer metadata over device buffers that the device writes itself (the
        device cycle): fixed upper bounds for the lengths, and no scheduling planned from
        their contents on the host (``fast_build``: FlashAttention 3 schedules inside its
        own launch), so the metadata stays valid for whatever the buffers hold later. The
        CPU backend plans from the contents: there it must be built again after each write."""
        from vllm.v1.attention.backend import CommonAttentionMetadata

        num_reqs = seq_lens.shape[0]
        cm = CommonAttentionMetadata(
            query_start_loc=query_start_loc, query_start_loc_cpu=query_start_loc.cpu(), seq_lens=seq_lens,
            num_reqs=num_reqs, num_actual_tokens=slot_mapping.shape[0], max_query_len=max_query_len,
            max_seq_len=max_seq_len, block_table_tensor=block_table, slot_mapping=slot_mapping, causal=True)
        return self._per_layer(cm, layer_names, fast_build=True)

    def device_schedule(self, attn: dict) -> list:
        """FlashAttention 3's scheduler metadata for metadata from :meth:`device_metadata`,
        planned once per call of a returned function rather than inside every layer's
        launch (each layer of a stage then skips its own planning kernel). It is planned
        on the device from the sequence lengths then in the buffers, into persistent
        memory the metadata points at: call each function after the lengths are written
        and before the layers run, inside the same CUDA graph. Empty for a backend
        without ahead-of-time scheduling (or with it switched off, as vLLM does for
        several sliding windows). Uses the builder's own planning call, so the plan is
        made with the same splits and bounds as the attention launch."""
        out, done = [], set()
        for group in self._attention_groups():
            builder = group.get_metadata_builder()
            if not getattr(builder, "aot_schedule", False) or not hasattr(builder, "_get_scheduler_metadata"):
                continue
            for name in group.layer_names:
                meta = attn.get(name)
                if meta is None or id(meta) in done or getattr(meta, "scheduler_metadata", 0) is not None:
                    continue
                done.add(id(meta))
                plan = functools.partial(
                    builder._get_scheduler_metadata, aot_schedule=True, batch_size=meta.seq_lens.shape[0],
                    cu_query_lens=meta.query_start_loc, max_query_len=meta.max_query_len, seqlens=meta.seq_lens,
                    max_seq_len=meta.max_seq_len, causal=meta.causal, max_num_splits=meta.max_num_splits)
                buf = plan().clone()
                meta.scheduler_metadata = buf
                out.append(functools.partial(_replan, plan, buf))
        return out

    def _per_layer(self, cm, layer_names: list[str], fast_build: bool = False):
        """Each layer's attention metadata built from ``cm`` (once per attention group),
        and its slot mapping."""
        wanted = set(layer_names)
        attn, slots = {}, {}
        for attn_group in self._attention_groups():
            names = [n for n in attn_group.layer_names if n in wanted]
            if not names:
                continue
            meta = attn_group.build_metadata(cm, fast_build=True) if fast_build else attn_group.build_metadata(cm)
            for n in names:
                attn[n] = meta
                slots[n] = cm.slot_mapping
        return attn, slots

    def _attention_groups(self) -> list:
        """The runner's attention groups, the extra layers (the draft module's) split off
        into groups of their own, with metadata builders of their own: a builder keeps
        persistent buffers for CUDA graphs (FlashAttention 3's scheduler metadata) that
        each build rewrites, and the draft module builds and runs on its own stream
        while a stage forward builds and replays on the main one."""
        if getattr(self, "_groups_of", None) is not self.runner.attn_groups:   # built once per KV-cache setup
            from dataclasses import replace

            extra = set(self.extra_layer_names)
            groups = []
            for group in self.runner.attn_groups:
                for attn_group in group:
                    mine = [n for n in attn_group.layer_names if n in extra]
                    if not mine:
                        groups.append(attn_group)
                        continue
                    rest = [n for n in attn_group.layer_names if n not in extra]
                    if rest:
                        groups.append(replace(attn_group, layer_names=rest))
                    own = replace(attn_group, layer_names=mine, metadata_builders=[], kernel_block_table=None)
                    own.create_metadata_builders(self.runner.vllm_config, self.device,
                                                 kernel_block_size=attn_group.kernel_block_size)
                    groups.append(own)
            self._groups, self._groups_of = groups, self.runner.attn_groups
        return self._groups

    # -- execution ----------------------------------------------------------------
    def run_layers(self, layers, first: int, last: int, chunks: list[Chunk], hidden, residual,
                   capture: set[int] = frozenset()):
        """Run decoder layers ``first..last-1`` on the tokens of ``chunks``.

        ``capture`` lists anchor ids to keep: anchor k is ``hidden + residual`` after
        layer k-1. Returns ``(hidden, residual, {anchor: tensor})``.
        """
        from vllm.forward_context import set_forward_context

        names = [self.layer_names[i] for i in range(first, last)]
        attn, slots, positions = self.metadata_for(chunks, names)
        anchors = {}
        num_tokens = positions.shape[0]
        with set_forward_context(attn, self.runner.vllm_config, num_tokens=num_tokens, slot_mapping=slots):
            for i in range(first, last):
                hidden, residual = layers[i](positions, hidden, residual)
                if i + 1 in capture:
                    anchors[i + 1] = hidden + residual
        return hidden, residual, anchors

    def run_module(self, fn, chunks: list[Chunk], layer_names: list[str]):
        """Run ``fn(positions)`` with metadata for ``layer_names`` over ``chunks``."""
        from vllm.forward_context import set_forward_context

        attn, slots, positions = self.metadata_for(chunks, layer_names)
        with set_forward_context(attn, self.runner.vllm_config, num_tokens=positions.shape[0], slot_mapping=slots):
            return fn(positions)

    def run_model(self, chunks: list[Chunk], layer_names: list[str], input_ids=None, intermediate=None):
        """One token per chunk through the runner's own model forward: this rank's layer
        slice, compiled, and replayed from vLLM's CUDA graphs where the batch size was
        captured: the full decode graph (attention included) when every chunk is one
        token, else the piecewise graphs. Inputs must already sit in the runner's
        persistent buffers (``input_ids``, ``intermediate_tensors``); positions are
        copied here."""
        from vllm.config import CUDAGraphMode
        from vllm.forward_context import set_forward_context

        runner = self.runner
        n = len(chunks)
        mode, desc = self._dispatch(chunks)
        padded = desc.num_tokens if desc is not None else n
        if mode == CUDAGraphMode.FULL:
            attn, slots = self._graph_metadata(chunks, layer_names, padded)
        else:
            attn, slots, positions = self.metadata_for(chunks, layer_names, pad_to=padded)
            runner.positions[:n].copy_(positions, non_blocking=True)
        if intermediate is not None:
            intermediate = intermediate[:padded]
        with set_forward_context(attn, runner.vllm_config, num_tokens=padded, cudagraph_runtime_mode=mode,
                                 batch_descriptor=desc, slot_mapping=slots):
            return runner.model(input_ids=None if input_ids is None else input_ids[:padded],
                                positions=runner.positions[:padded], intermediate_tensors=intermediate,
                                inputs_embeds=None)

    def _dispatch(self, chunks: list[Chunk]):
        """vLLM's CUDA-graph mode and padded batch for these chunks (NONE without graphs)."""
        from vllm.config import CUDAGraphMode

        dispatcher = getattr(self.runner, "cudagraph_dispatcher", None)
        if dispatcher is None:
            return CUDAGraphMode.NONE, None
        uniform = all(c.num_tokens == 1 for c in chunks)
        modes = {CUDAGraphMode.PIECEWISE, CUDAGraphMode.NONE}
        if uniform and self.full_graphs:
            modes.add(CUDAGraphMode.FULL)
        return dispatcher.dispatch(len(chunks), uniform_decode=uniform, valid_modes=modes)

    @property
    def full_graphs(self) -> bool:
        """Full decode graphs are replayed for stage forwards: on unless switched off by
        ``VLLM_SPD_FULL_GRAPHS=0``, and only with one KV-cache group (their metadata
        lives in the runner's persistent buffers, which hold one block table)."""
        from vllm_spd import envs

        groups = getattr(getattr(self.runner, "kv_cache_config", None), "kv_cache_groups", ())
        return envs.full_graphs() and len(groups) == 1

    def _graph_metadata(self, chunks: list[Chunk], layer_names: list[str], padded: int):
        """Attention metadata for one token per chunk, padded to ``padded`` requests, in
        the persistent buffers vLLM captured its full decode graphs with (query start
        locations, sequence lengths, positions, block table, slot mapping)."""
        runner = self.runner
        bt = runner.input_batch.block_table[0]
        bufs = GraphBuffers(runner.query_start_loc.gpu, runner.seq_lens, runner.positions,
                            bt.get_device_tensor(padded), bt.slot_mapping.gpu)
        return self.write_metadata(self._host_metadata(chunks, padded, padded), bufs, layer_names)


@dataclass
class HostMetadata:
    """A batch's attention metadata on the host (numpy; ``table`` a CPU tensor of the
    real requests' block-table rows)."""
    qsl: np.ndarray          # [num_reqs + 1] int32
    seq_lens: np.ndarray     # [num_reqs] int32
    positions: np.ndarray    # [num_tokens] int64
    table: torch.Tensor      # [real requests, blocks] int32
    slots: np.ndarray        # [num_tokens] int64, -1 = no KV write
    max_query_len: int

    @property
    def max_seq_len(self) -> int:
        return int(self.seq_lens.max())


@dataclass
class GraphBuffers:
    """Persistent device memory a CUDA graph's attention reads, rewritten before each
    replay (:meth:`SliceRunner.write_metadata`)."""
    query_start_loc: torch.Tensor   # [>= reqs + 1] int32
    seq_lens: torch.Tensor          # [>= reqs] int32
    positions: torch.Tensor         # [>= tokens] int64
    block_table: torch.Tensor       # [>= reqs, blocks] int32
    slot_mapping: torch.Tensor      # [>= tokens] int64

    @classmethod
    def allocate(cls, max_reqs: int, max_tokens: int, blocks: int, device) -> "GraphBuffers":
        def zeros(*size, dtype):
            return torch.zeros(*size, dtype=dtype, device=device)
        return cls(zeros(max_reqs + 1, dtype=torch.int32), zeros(max_reqs, dtype=torch.int32),
                   zeros(max_tokens, dtype=torch.int64), zeros(max_reqs, blocks, dtype=torch.int32),
                   torch.full((max_tokens,), -1, dtype=torch.int64, device=device))
