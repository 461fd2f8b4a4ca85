"""The cycle state machine, without vLLM."""

import random

from vllm_spd.core.pipeline import CommitGate, RequestPipeline


def simulate(n, target, drafts_right, steps=200):
    """Drive a pipeline against a known target sequence; drafts are right when
    ``drafts_right(pos)``; returns committed tokens and cycles used."""
    p = RequestPipeline(n, target[0], 0)
    out, cycles = [target[0]], 0
    while len(out) < steps:
        cycles += 1
        pos = p.draft_pos
        draft = target[pos] if drafts_right(pos) else -7
        for stage, e in p.stage_work():
            assert stage == e.depth
        p.advance(draft)
        done = p.completing()
        if done is None:
            continue
        cand = p.candidate()
        truth = target[done.pos + 1]
        ok = cand is not None and cand.token == truth
        out += p.resolve(ok, truth).committed
        # Invariant: the window is contiguous, newest first, depths 0.. ascending.
        poss = [e.pos for e in p.window]
        assert poss == list(range(poss[0], poss[0] - len(poss), -1))
        assert [e.depth for e in p.window] == sorted(e.depth for e in p.window)
        assert p.committed_len == len(out)
    return out, cycles


def test_commits_exactly_the_target_sequence_for_any_drafts():
    rng = random.Random(0)
    target = [rng.randrange(100) for _ in range(400)]
    for n in (1, 2, 3, 4, 6):
        for rate in (0.0, 0.5, 0.9, 1.0):
            out, cycles = simulate(n, target, lambda pos: rng.random() < rate)
            assert out == target[: len(out)]


def test_all_right_drafts_commit_one_token_per_cycle_after_fill():
    target = list(range(500))
    for n in (1, 2, 4):
        out, cycles = simulate(n, target, lambda pos: True, steps=100)
        assert cycles == len(out) - 1 + (n - 1)


def test_all_wrong_drafts_cost_n_cycles_per_token():
    target = list(range(500))
    for n in (1, 2, 4):
        out, cycles = simulate(n, target, lambda pos: False, steps=50)
        assert cycles == n * (len(out) - 1)


def test_reject_flushes_newer_tokens_and_reenters_corrected_at_stage_zero():
    p = RequestPipeline(3, 10, 5)
    p.advance(11)
    p.advance(12)
    p.advance(13)                      # 5 completes; window 8,7,6 and 5 done
    assert p.completing().pos == 5 and p.candidate().pos == 6
    assert p.successor(p.window[1]).pos == 8 and p.successor(p.window[0]) is None
    outcome = p.resolve(False, 99)
    assert outcome.committed == [99] and outcome.verified and not outcome.accepted
    assert [(e.pos, e.token, e.depth) for e in p.window] == [(6, 99, 0)]
    assert p.stage_work() == [(0, p.window[0])]


def test_missing_draft_yields_target_token_without_verification():
    p = RequestPipeline(1, 10, 5)
    p.advance(None)
    assert p.candidate() is None
    outcome = p.resolve(False, 42)
    assert outcome.committed == [42] and not outcome.verified


def test_stage_work_respects_position_limit():
    p = RequestPipeline(2, 10, 5)
    p.advance(11)
    assert [e.pos for _, e in p.stage_work(pos_limit=6)] == [5]


def test_gate_stops_at_eos_inside_the_window():
    g = CommitGate(stop_ids={2}, mask_ids={2}, min_tokens=0, max_tokens=100)
    assert g.admit([5, 6]) == [5, 6]
    assert g.admit([2]) == [2] and g.stopped
    assert g.admit([7]) == []


def test_gate_max_tokens_and_min_tokens():
    g = CommitGate(stop_ids={2}, mask_ids={2, 0}, min_tokens=2, max_tokens=4, num_output=0)
    assert g.masks_stop_tokens                 # the target may not produce a stop yet
    assert g.admit([5, 6]) == [5, 6] and not g.masks_stop_tokens
    assert g.admit([0]) == [0] and not g.stopped       # 0 is only masked, not a stop (ignore_eos)
    assert g.admit([2, 9]) == [2] and g.stopped
    g = CommitGate(stop_ids=set(), mask_ids=set(), min_tokens=0, max_tokens=3, num_output=1)
    assert g.admit([1, 1, 1]) == [1, 1] and g.stopped
