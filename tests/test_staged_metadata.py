"""The full-decode-graph metadata (written into the runner's persistent buffers) says
the same as the per-call metadata for the real rows, and pads the way vLLM pads."""

from types import SimpleNamespace

import numpy as np
import torch

from vllm_spd.engine.staged import Chunk, SliceRunner

BLOCK = 4


class _Buffer:
    """The shape of vLLM's CpuGpuBuffer that the runner's buffers have."""

    def __init__(self, *size, dtype):
        self.cpu = torch.zeros(*size, dtype=dtype)
        self.gpu = torch.full(size, 99, dtype=dtype)
        self.np = self.cpu.numpy()


class _Group:
    def __init__(self, names):
        self.layer_names = names
        self.built = []

    def build_metadata(self, cm):
        self.built.append(cm)
        return cm


def _runner(max_reqs=8, max_blocks=6):
    table = _Buffer(max_reqs, max_blocks, dtype=torch.int32)
    gen = np.random.default_rng(0)
    table.cpu[:] = torch.from_numpy(gen.permutation(max_reqs * max_blocks).reshape(max_reqs, max_blocks) + 1)
    table.gpu.copy_(table.cpu)
    bt = SimpleNamespace(block_table=table, slot_mapping=_Buffer(64, dtype=torch.int64),
                         get_cpu_tensor=lambda: table.cpu, get_device_tensor=lambda n: table.gpu[:n])
    group = _Group(["l0", "l1", "other"])
    return SimpleNamespace(
        device=torch.device("cpu"), cache_config=SimpleNamespace(block_size=BLOCK),
        input_batch=SimpleNamespace(block_table=[bt]), query_start_loc=_Buffer(65, dtype=torch.int32),
        seq_lens=torch.full((64,), 7, dtype=torch.int32), positions=torch.full((64,), 5, dtype=torch.int64),
        attn_groups=[[group]], kv_cache_config=SimpleNamespace(kv_cache_groups=[0])), group


def test_graph_metadata_matches_per_call_metadata_and_pads():
    runner, group = _runner()
    sr = SliceRunner(runner, {0: "l0", 1: "l1"})
    chunks = [Chunk(5, 9, 1), Chunk(2, 3, 1), Chunk(6, 17, 1)]   # rows out of order
    n, padded = len(chunks), 4
    ref, ref_pos = sr._common_metadata(chunks, pad_to=padded)
    attn, slots = sr._graph_metadata(chunks, ["l0", "l1"], padded)
    cm = group.built[-1]
    assert set(attn) == {"l0", "l1"} and all(attn[k] is cm for k in attn)
    assert all(slots[k] is cm.slot_mapping for k in slots)
    # The real rows: what the per-call metadata says.
    assert torch.equal(cm.query_start_loc[: n + 1], ref.query_start_loc)
    assert torch.equal(cm.seq_lens[:n], ref.seq_lens)
    assert torch.equal(cm.block_table_tensor[:n], ref.block_table_tensor)
    assert torch.equal(cm.slot_mapping, ref.slot_mapping)            # padded slot -1 in both
    assert torch.equal(runner.positions[:n], ref_pos)
    assert cm.max_seq_len == ref.max_seq_len == 18 and cm.max_query_len == 1
    # Padding as vLLM pads a decode batch: no query, no sequence, null block, no slot.
    assert cm.num_reqs == cm.num_actual_tokens == padded
    assert cm.query_start_loc.tolist() == [0, 1, 2, 3, 3]
    assert cm.query_start_loc_cpu.tolist() == [0, 1, 2, 3, 3]
    assert cm.seq_lens[n:].tolist() == [0]
    assert cm.block_table_tensor[n:].eq(0).all()
    # It is the runner's persistent memory that holds all of this (what the graph reads).
    bt = runner.input_batch.block_table[0]
    assert cm.block_table_tensor.data_ptr() == bt.block_table.gpu.data_ptr()
    assert cm.slot_mapping.data_ptr() == bt.slot_mapping.gpu.data_ptr()
    assert cm.seq_lens.data_ptr() == runner.seq_lens.data_ptr()
    assert cm.query_start_loc.data_ptr() == runner.query_start_loc.gpu.data_ptr()
    # Rows past the padded batch are left alone.
    assert bt.block_table.gpu[padded:].equal(bt.block_table.cpu[padded:])


def test_full_graphs_switch(monkeypatch):
    runner, _ = _runner()
    sr = SliceRunner(runner, {0: "l0"})
    assert sr.full_graphs
    monkeypatch.setenv("VLLM_SPD_FULL_GRAPHS", "0")
    assert not sr.full_graphs
    monkeypatch.delenv("VLLM_SPD_FULL_GRAPHS")
    runner.kv_cache_config.kv_cache_groups = [0, 1]   # hybrid models: piecewise only
    assert not sr.full_graphs


def test_extra_layers_get_their_own_metadata_builder():
    """The draft module's layers build metadata with a builder of their own (its
    persistent buffers are not the ones the stage forward's graphs read)."""
    from vllm.v1.worker.utils import AttentionGroup

    class Builder:
        requires_block_table_width = False

        def __init__(self, spec, names, vllm_config, device):
            self.names = list(names)

        def build(self, common_prefix_len, cm):
            return self

    backend = SimpleNamespace(get_builder_cls=lambda: Builder)
    group = AttentionGroup(backend, ["t0", "t1", "d0"], SimpleNamespace(block_size=BLOCK), 0)
    group.metadata_builders = [Builder(None, group.layer_names, None, None)]
    runner, _ = _runner()
    runner.attn_groups = [[group]]
    runner.vllm_config = None
    sr = SliceRunner(runner, {0: "t0", 1: "t1"}, extra_layer_names=["d0"])
    attn, _, _ = sr.metadata_for([Chunk(0, 3, 1)], ["t0", "t1", "d0"])
    assert attn["t0"] is attn["t1"] is group.metadata_builders[0]    # the target's own builder
    assert attn["d0"] is not group.metadata_builders[0] and attn["d0"].names == ["d0"]
    again, _, _ = sr.metadata_for([Chunk(0, 4, 1)], ["d0"])
    assert again["d0"] is attn["d0"]                                  # made once, reused


def test_draft_rows_padded_outside_every_request():
    """The draft module's fixed shapes: requests of several rows, padded with tokens
    that belong to no request (no KV slot, position 0), written into buffers of its own
    with fixed upper bounds as the metadata's maxima."""
    from vllm_spd.engine.staged import GraphBuffers

    runner, group = _runner()
    sr = SliceRunner(runner, {0: "l0"})
    chunks = [Chunk(3, 10, 3), Chunk(1, 4, 2)]          # 5 real rows
    host = sr._host_metadata(chunks, num_tokens=8)
    ref, ref_pos = sr._common_metadata(chunks)
    assert host.qsl.tolist() == [0, 3, 5] and host.seq_lens.tolist() == [13, 6]
    assert host.positions.tolist() == [10, 11, 12, 4, 5, 0, 0, 0]
    assert host.slots[5:].tolist() == [-1, -1, -1]
    bufs = GraphBuffers.allocate(4, 12, runner.input_batch.block_table[0].get_cpu_tensor().shape[1], "cpu")
    attn, slots = sr.write_metadata(host, bufs, ["l0"], max_query_len=4, max_seq_len=512)
    cm = group.built[-1]
    assert attn["l0"] is cm and slots["l0"] is cm.slot_mapping
    assert cm.num_reqs == 2 and cm.num_actual_tokens == 8
    assert (cm.max_query_len, cm.max_seq_len) == (4, 512)
    assert torch.equal(cm.slot_mapping[:5], ref.slot_mapping) and cm.slot_mapping[5:].eq(-1).all()
    assert torch.equal(cm.block_table_tensor, ref.block_table_tensor)
    assert torch.equal(bufs.positions[:5], ref_pos) and bufs.positions[5:8].eq(0).all()
    assert cm.query_start_loc.data_ptr() == bufs.query_start_loc.data_ptr()
