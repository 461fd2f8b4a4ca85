"""The device cycle's state (``cycle_state.py``) against the readable reference
(``RequestPipeline`` + ``CommitGate``): random drafts, accepts and rejects, stops, budgets
and blocked drafts, one batch of rows at once; commits, cycle counts, verdict counts,
and every stage's token and KV position must be identical, cycle by cycle."""

import random

import pytest
import torch

from vllm_spd.core.cycle_state import CycleState
from vllm_spd.core.pipeline import CommitGate, RequestPipeline

VOCAB = 50


class Reference:
    """One request as the host-driven runner moves it (``verdict_lag`` 0)."""

    def __init__(self, n, rng, pos):
        self.pipe = RequestPipeline(n, rng.randrange(VOCAB), pos)
        self.pipe.committed_len = pos
        stop = {rng.randrange(VOCAB)} if rng.random() < 0.7 else set()
        self.gate = CommitGate(stop, stop, min_tokens=rng.randrange(0, 6), max_tokens=rng.randrange(4, 60))
        self.limit = 10 ** 6
        self.pending = False


def load(st, b, ref: Reference, budget):
    win = ref.pipe.window
    W = st.tok.shape[1]
    st.tok[b] = torch.tensor([e.token for e in win] + [0] * (W - len(win)))
    st.depth[b] = torch.tensor([e.depth for e in win] + [0] * (W - len(win)))
    st.head[b], st.wlen[b], st.committed_len[b] = win[0].pos, len(win), ref.pipe.committed_len
    st.stop_ids[b] = -1
    for i, s in enumerate(sorted(ref.gate.stop_ids)):
        st.stop_ids[b, i] = s
    mask = sorted(ref.gate.mask_ids) or [0]
    st.mask_ids[b] = torch.tensor((mask * st.mask_ids.shape[1])[: st.mask_ids.shape[1]])
    st.min_tokens[b], st.max_tokens[b] = ref.gate.min_tokens, ref.gate.max_tokens
    st.num_output[b], st.stopped[b] = ref.gate.num_output, int(ref.gate.stopped)
    st.real[b], st.limit[b], st.budget[b] = 1, ref.limit, budget


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("seed", range(6))
def test_device_state_matches_reference(num_stages, seed):
    rng = random.Random(seed * 31 + num_stages)
    B, C = 5, 2 * num_stages
    refs = [Reference(num_stages, rng, rng.randrange(3, 40)) for _ in range(B)]
    refs[-1].limit = refs[-1].pipe.newest.pos + num_stages + 3     # drafts get blocked near the end
    accept_p = [rng.choice([0.0, 0.5, 0.9, 1.0]) for _ in range(B)]
    st = CycleState.allocate(B + 2, num_stages, C)        # two padding rows that never move
    st.stopped[B:] = 1
    for step in range(12):
        budgets = [rng.randrange(1, C + 1) for _ in range(B)]
        for b, ref in enumerate(refs):
            load(st, b, ref, budgets[b])
        st.ring_len.zero_(), st.cycles.zero_(), st.verified.zero_(), st.accepted.zero_()
        ref_commits = [[] for _ in range(B)]
        ref_stats = [[0, 0, 0] for _ in range(B)]
        st.pending[:B] = torch.tensor([int(r.pending) for r in refs])
        for _ in range(C):
            live = st.live()
            # the reference's decision of who runs, and what each stage runs
            active = [not r.gate.stopped and len(ref_commits[b]) < budgets[b] for b, r in enumerate(refs)]
            assert live[:B].tolist() == active and not live[B:].any()
            plan = st.stage_plan(live)
            for s in range(num_stages):
                runs, tok, pos = (x[s] for x in plan)
                for b, r in enumerate(refs):
                    work = [e for d, e in r.pipe.stage_work() if d == s] if active[b] else []
                    assert bool(runs[b]) == bool(work), (step, b, s)
                    if work:
                        assert (int(tok[b]), int(pos[b])) == (work[0].token, work[0].pos)
            # drafts, and targets that accept or reject the candidate
            drafts = torch.tensor([rng.randrange(VOCAB) for _ in range(B + 2)])
            targets = torch.tensor([rng.randrange(VOCAB) for _ in range(B + 2)])
            for b, r in enumerate(refs):
                if not active[b]:
                    continue
                ref_stats[b][0] += 1
                r.pending = False
                want = r.pipe.draft_pos < r.limit
                r.pipe.advance(int(drafts[b]) if want else None)
                done = r.pipe.completing()
                if done is None:
                    continue
                cand = r.pipe.candidate()
                if cand is not None and rng.random() < accept_p[b]:
                    targets[b] = cand.token
                elif cand is not None and targets[b] == cand.token:
                    targets[b] = (cand.token + 1) % VOCAB
                if r.gate.masks_stop_tokens and int(targets[b]) in r.gate.mask_ids:
                    targets[b] = (targets[b] + 1) % VOCAB    # the target never picks a masked id
                accepted = cand is not None and cand.token == int(targets[b])
                out = r.pipe.resolve(accepted, int(targets[b]))
                r.pending = True
                ref_stats[b][1] += int(out.verified)
                ref_stats[b][2] += int(out.accepted)
                ref_commits[b] += r.gate.admit(out.committed)
            st.advance(live, drafts, targets)
        for b, r in enumerate(refs):
            ring = st.ring[b, : int(st.ring_len[b])].tolist()
            assert ring == ref_commits[b], (step, b)
            assert [int(st.cycles[b]), int(st.verified[b]), int(st.accepted[b])] == ref_stats[b], (step, b)
            win = [(int(st.head[b]) - j, int(st.tok[b, j]), int(st.depth[b, j])) for j in range(int(st.wlen[b]))]
            assert win == [(e.pos, e.token, e.depth) for e in r.pipe.window], (step, b)
            assert int(st.committed_len[b]) == r.pipe.committed_len
            assert bool(st.pending[b]) == r.pending
            assert int(st.num_output[b]) == r.gate.num_output and bool(st.stopped[b]) == r.gate.stopped
        assert st.ring_len[B:].eq(0).all() and st.cycles[B:].eq(0).all()


def test_min_tokens_mask():
    st = CycleState.allocate(2, 2, 4)
    st.mask_ids[0] = torch.tensor([3, 5, 3, 3])
    st.mask_ids[1] = torch.tensor([3, 5, 3, 3])
    st.min_tokens[:] = torch.tensor([2, 2])
    st.num_output[:] = torch.tensor([1, 2])    # row 0 still masks, row 1 no longer
    logits = torch.arange(8.0).repeat(2, 1)
    st.mask_min_tokens(logits)
    assert logits[0].tolist() == [0, 1, 2, float("-inf"), 4, float("-inf"), 6, 7]
    assert logits[1].tolist() == list(map(float, range(8)))


def test_load_packed_fills_each_destination():
    """``device_cycle.load_packed``: every host tensor lands in its destination (rows of a
    wider buffer, a slice, a whole vector), nothing else is touched."""
    from vllm_spd.engine.device_cycle import load_packed

    wide = torch.full((4, 3), -7, dtype=torch.int64)
    vec = torch.full((4,), -7, dtype=torch.int64)
    tail = torch.full((4,), -7, dtype=torch.int64)
    load_packed([(wide[:2], torch.tensor([[1, 2, 3], [4, 5, 6]])), (vec, torch.arange(4)),
                 (tail[3:], torch.tensor([9]))])
    assert wide.tolist() == [[1, 2, 3], [4, 5, 6], [-7, -7, -7], [-7, -7, -7]]
    assert vec.tolist() == [0, 1, 2, 3]
    assert tail.tolist() == [-7, -7, -7, 9]
