"""The fused cycle kernels against their torch references: the bookkeeping
(``kernels/cycle_triton.py`` against ``CycleState.advance``: random windows, drafts,
targets, stops, budgets, blocked drafts and padding rows, many cycles in a row; every
state field must be identical after each cycle) and the stage plan
(``kernels/stage_plan_triton.py`` against ``stage_plan.plan_stages_reference``, on the
states those cycles pass through, with random block tables; the reference itself is
checked row by row against the block table). On CPU the kernels run in Triton's
interpreter, in a fresh process (the flag must be set before triton is first imported)."""

import os
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from vllm_spd.core.cycle_state import CycleState

HERE = os.path.dirname(os.path.abspath(__file__))


def random_state(B, n, K, gen):
    st = CycleState.allocate(B, n, K, stop_slots=16, mask_slots=16)
    W = n + 1
    for b in range(B):
        wlen = int(torch.randint(1, n + 1, (), generator=gen))
        st.wlen[b] = wlen
        st.head[b] = int(torch.randint(10, 50, (), generator=gen))
        st.tok[b] = torch.randint(0, 6, (W,), generator=gen)
        st.depth[b, :wlen] = torch.arange(wlen)              # newest at depth 0, one older per slot
        st.stop_ids[b, 0] = int(torch.randint(0, 6, (), generator=gen))
        st.max_tokens[b] = int(torch.randint(2, 40, (), generator=gen))
        st.budget[b] = int(torch.randint(1, K + 1, (), generator=gen))
        st.limit[b] = st.head[b] + int(torch.randint(1, 3 * n, (), generator=gen))
        st.real[b] = int(b < B - 1)                          # the last row pads
    return st


def check_plan(st, live, table, block_size, gen) -> tuple[int, int]:
    """The fused stage plan equals the reference, and the reference's attention rows are
    what the block table says; returns (stage rows that run, of them rows with a KV slot)."""
    from vllm_spd.kernels.stage_plan_triton import plan_stages_triton
    from vllm_spd.core.stage_plan import StagePlan, plan_stages_reference

    n, B = st.num_stages, st.tok.shape[0]
    # buffers wider than the batch, as the device cycle holds them, garbage in the rest
    ref, fused = StagePlan.allocate(n, B + 3), StagePlan.allocate(n, B + 3)
    for f in fields(StagePlan):
        getattr(fused, f.name).copy_(torch.randint(0, 9, getattr(fused, f.name).shape, generator=gen))
    plan_stages_reference(st, live, table, block_size, ref.rows(B))
    plan_stages_triton(st, live, table, block_size, fused.rows(B))
    for f in fields(StagePlan):
        assert torch.equal(getattr(ref, f.name)[:, :B], getattr(fused, f.name)[:, :B]), f.name
    runs = written = 0
    for s in range(n):
        for b in range(B):
            pos = int(ref.pos[s, b])
            if bool(ref.runs[s, b]) and 0 <= pos < int(st.limit[b]):
                slot = int(table[b, pos // block_size]) * block_size + pos % block_size
                assert (int(ref.slots[s, b]), int(ref.seq_lens[s, b])) == (slot, pos + 1)
                written += 1
            else:
                assert (int(ref.slots[s, b]), int(ref.seq_lens[s, b])) == (-1, 1)
            runs += int(ref.runs[s, b])
    return runs, written


def compare(seed: int) -> None:
    from vllm_spd.kernels.cycle_triton import advance_triton

    gen = torch.Generator().manual_seed(seed)
    accepts = flushes = stops = runs = written = 0
    block_size = 4
    for n in (1, 2, 4, 8):
        K = 2 * n
        a = random_state(5, n, K, gen)
        b = CycleState(**{f.name: getattr(a, f.name).clone() for f in fields(CycleState)})
        table = torch.randint(0, 1000, (5, 200 // block_size), generator=gen, dtype=torch.int32)
        for _ in range(3 * K):
            live = a.live()
            assert torch.equal(live, b.live())
            r, w = check_plan(a, live, table, block_size, gen)
            runs, written = runs + r, written + w
            draft = torch.randint(0, 6, (5,), generator=gen)
            # targets that often equal the candidate (accepts) and often not (flushes)
            cand = torch.where(a.wlen >= 2, a.tok.gather(1, (a.wlen - 2).clamp(min=0)[:, None])[:, 0], draft)
            target = torch.where(torch.rand(5, generator=gen) < 0.6, cand, torch.randint(0, 6, (5,), generator=gen))
            a.advance(live, draft, target.clone())
            advance_triton(b, live, draft, target.clone())
            for f in fields(CycleState):
                assert torch.equal(getattr(a, f.name), getattr(b, f.name)), (seed, n, f.name)
        accepts += int(a.accepted.sum())
        flushes += int(a.epoch.sum())
        stops += int(a.stopped[:-1].sum())
    assert accepts and flushes and stops, (accepts, flushes, stops)   # every path was taken
    assert 0 < written < runs, (runs, written)     # stage rows with a KV slot and rows without


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_matches_torch_on_gpu():
    compare(0)


def test_kernel_matches_torch_interpreted():
    pytest.importorskip("triton")
    code = f"import sys; sys.path.insert(0, {HERE!r}); import test_cycle_kernel as t; [t.compare(s) for s in range(4)]"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_cycle_kernels_bench_steady_state():
    """benchmarks/cycle_kernels.py times what it says: every row stays live, every
    draft is accepted (no flush), every stage runs and writes a KV slot, cycle after cycle."""
    sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
    import cycle_kernels

    from vllm_spd.core.stage_plan import StagePlan

    for n in (2, 4, 8):
        st = cycle_kernels.steady_state(n, 3, "cpu")
        plan = StagePlan.allocate(n, 3)
        table = torch.randint(0, 4096, (3, 128), dtype=torch.int32)
        for _ in range(40):
            cycle_kernels.one_cycle(st, table, plan, torch.full((3,), 11), 16)
            assert bool(plan.runs.all()) and bool((plan.slots >= 0).all())
        assert st.accepted.tolist() == [40] * 3 and st.epoch.tolist() == [0] * 3 and st.wlen.tolist() == [n] * 3
    assert cycle_kernels.main(["--dry-run", "--stages", "2", "--batch", "1"]) == 0
