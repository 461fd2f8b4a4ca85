"""Tests for vllm_spd.core.verify (single-draft SPD verification).

CPU, float32, fixed seeds. The vLLM comparisons call vLLM 0.32.0's own sampler
code (Sampler, min-p logits processor, apply_top_k_top_p); the statistical
tests check losslessness with a chi-square goodness-of-fit test and show that
the same test rejects deliberately broken verifiers.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vllm_spd.core import verify as V

NEG_INF = float("-inf")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def chi2_pvalue(counts: torch.Tensor, p: torch.Tensor) -> float:
    """Goodness-of-fit p-value of ``counts`` [V] against distribution ``p`` [V].

    Any count on a token with p == 0 is an outright rejection (p-value 0).
    Uses the chi-square survival function Q(df/2, stat/2) (no scipy needed).
    """
    counts = counts.double()
    p = p.double()
    n = counts.sum()
    support = p > 0
    if counts[~support].sum() > 0:
        return 0.0
    expected = n * p[support]
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    df = torch.tensor(float(int(support.sum()) - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def _vllm():
    """vLLM's sampler pieces (imported lazily: vLLM import is slow)."""
    pytest.importorskip("vllm")
    from vllm.v1.sample import sampler as vs
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor
    from vllm.v1.sample.logits_processor.interface import BatchUpdate
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    return SimpleNamespace(
        sampler_mod=vs,
        Sampler=vs.Sampler,
        LogitsProcessors=LogitsProcessors,
        MinP=MinPLogitsProcessor,
        BatchUpdate=BatchUpdate,
        SamplingMetadata=SamplingMetadata,
        apply_top_k_top_p=apply_top_k_top_p,
    )


def _vllm_batch_params(temp, top_k, top_p, min_p, vocab):
    """Convert per-row settings the way vLLM's InputBatch does.

    top_k: values outside (0, V) -> V; the tensor is None if no row uses top-k.
    top_p: None if no row has top_p < 1. Greedy rows: temperature 0.
    """
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
    k = k.to(torch.int32)
    k = None if bool((k == vocab).all()) else k
    p = None if bool((top_p >= 1).all()) else top_p.clone()
    t = torch.where(temp < V.SAMPLING_EPS, torch.zeros_like(temp), temp)
    return t, k, p, min_p


def _vllm_minp(vl, min_p):
    proc = vl.MinP(
        SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=len(min_p))),
        torch.device("cpu"),
        False,
    )
    added = [
        (i, SimpleNamespace(min_p=float(m)), [], []) for i, m in enumerate(min_p.tolist())
    ]
    proc.update_state(vl.BatchUpdate(batch_size=len(min_p), removed=[], added=added, moved=[]))
    return proc


def vllm_processed_logits(vl, logits, temp, top_k, top_p, min_p):
    """vLLM's own order: temperature -> argmax-invariant procs (min-p) -> top-k/top-p."""
    t, k, p, mp = _vllm_batch_params(temp, top_k, top_p, min_p, logits.shape[1])
    x = logits.clone().float()
    all_random = bool((t >= V.SAMPLING_EPS).all())
    x = vl.Sampler.apply_temperature(x, t, all_random)
    x = _vllm_minp(vl, mp).apply(x)
    return vl.apply_top_k_top_p(x, k, p)


def vllm_sampler_run(vl, logits, temp, top_k, top_p, min_p):
    """Run vLLM's full Sampler with processed_logprobs; returns (tokens, logprobs)."""
    batch = logits.shape[0]
    t, k, p, mp = _vllm_batch_params(temp, top_k, top_p, min_p, logits.shape[1])
    greedy = t < V.SAMPLING_EPS
    md = vl.SamplingMetadata(
        temperature=t,
        all_greedy=bool(greedy.all()),
        all_random=bool((~greedy).all()),
        top_p=p,
        top_k=k,
        generators={},
        max_num_logprobs=-1,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch),
        presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch),
        output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=vl.LogitsProcessors([_vllm_minp(vl, mp)]),
    )
    out = vl.Sampler(logprobs_mode="processed_logprobs")(logits.clone(), md)
    return out.sampled_token_ids.squeeze(1).long(), out.logprobs_tensors.logprobs


# Per-row settings: (temperature, top_k, top_p, min_p). top_k 0 / -1 / >= V = off.
SETTINGS = {
    "temperature_only": ([0.7, 1.0, 1.5, 0.3], [0, 0, 0, 0], [1.0] * 4, [0.0] * 4),
    "top_k_only": ([0.8, 1.0, 1.2, 1.0], [5, -1, 1, 1000], [1.0] * 4, [0.0] * 4),
    "top_p_only": ([1.0, 0.6, 1.3, 1.0], [0] * 4, [0.9, 0.5, 1.0, 1e-3], [0.0] * 4),
    "min_p_only": ([1.0, 0.5, 2.0, 1.0], [0] * 4, [1.0] * 4, [0.1, 0.0, 0.3, 1.0]),
    "all_mixed_with_greedy": (
        [0.8, 0.0, 1.1, 1e-6, 0.5],
        [10, 0, 3, 7, 0],
        [0.9, 1.0, 0.7, 0.5, 0.95],
        [0.05, 0.0, 0.2, 0.3, 0.0],
    ),
}


def _case(name, vocab=64, seed=0, ties=False):
    temp, k, p, mp = SETTINGS[name]
    g = torch.Generator().manual_seed(seed)
    b = len(temp)
    if ties:  # integer logits -> many exact ties at the top-k / top-p cut
        logits = torch.randint(-4, 5, (b, vocab), generator=g).float()
    else:
        logits = torch.randn(b, vocab, generator=g) * 3
    return (
        logits,
        torch.tensor(temp),
        torch.tensor(k),
        torch.tensor(p),
        torch.tensor(mp),
    )


# --------------------------------------------------------------------------
# target_probs vs vLLM
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True], ids=["randn", "ties"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_warp_logits_matches_vllm_functions(name, ties):
    vl = _vllm()
    logits, temp, k, p, mp = _case(name, ties=ties)
    ours = V.warp_logits(logits, temp, k, p, mp)
    ref = vllm_processed_logits(vl, logits, temp, k, p, mp)
    assert torch.equal(ours, ref)
    assert torch.equal(logits, _case(name, ties=ties)[0])  # input untouched


@pytest.mark.parametrize("ties", [False, True], ids=["randn", "ties"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_target_probs_matches_vllm_sampler(name, ties):
    vl = _vllm()
    logits, temp, k, p, mp = _case(name, ties=ties)
    probs = V.target_probs(logits, temp, k, p, mp)
    tokens, logprobs = vllm_sampler_run(vl, logits, temp, k, p, mp)
    greedy = temp < V.SAMPLING_EPS
    torch.testing.assert_close(probs[~greedy], logprobs.exp()[~greedy], atol=1e-6, rtol=1e-5)
    # same support (masked set) exactly
    assert torch.equal(probs[~greedy] > 0, logprobs[~greedy] > NEG_INF)
    # greedy rows: one-hot at exactly the token vLLM's sampler emits
    onehot = torch.nn.functional.one_hot(tokens, logits.shape[1]).float()
    assert torch.equal(probs[greedy], onehot[greedy])
    # sampled rows: vLLM's sampled token lies in our support
    rows = torch.arange(len(tokens))
    assert bool((probs[rows, tokens] > 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(tokens)))


def test_none_parameters_mean_off():
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.7, 1.0, 2.0])
    off = V.warp_logits(logits, t, torch.tensor([0, -1, 30]), torch.ones(3), torch.zeros(3))
    assert torch.equal(off, V.warp_logits(logits, t))
    torch.testing.assert_close(V.target_probs(logits, t), (logits / t[:, None]).softmax(-1))


def test_order_temperature_then_min_p_then_top_p():
    # probs [.4, .3, .2, .1]. min-p commutes with top-k (it is relative to the
    # max), but not with top-p and not with temperature.
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    one = torch.tensor([1.0])
    # min_p=0.3 first cuts .1; top-p=.75 on [4,3,2]/9 then cuts 2/9 -> [4,3]/7.
    # (top-p first would cut only .1 and keep [4,3,2]/9.)
    probs = V.target_probs(logits, one, None, torch.tensor([0.75]), torch.tensor([0.3]))
    torch.testing.assert_close(probs, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))
    # T=2 first: ratios to max are sqrt([1, .75, .5, .25]) = [1, .87, .71, .5],
    # so min_p=0.6 keeps 3 tokens (it would keep 2 before temperature).
    probs = V.target_probs(logits, torch.tensor([2.0]), None, None, torch.tensor([0.6]))
    expect = torch.tensor([[0.4, 0.3, 0.2, 0.0]]).sqrt()
    torch.testing.assert_close(probs, expect / expect.sum())


# --------------------------------------------------------------------------
# greedy: exact tensors
# --------------------------------------------------------------------------


def test_verify_greedy_exact():
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0], [2.0, 2.0, 1.0]])
    draft = torch.tensor([1, 2, 2, 1])
    acc, tok = V.verify_greedy(logits, draft)
    assert torch.equal(acc, torch.tensor([True, False, True, False]))
    assert torch.equal(tok, torch.tensor([1, 0, 2, 0]))  # ties -> first index (as vLLM)
    acc, tok = V.verify_greedy(logits[:1], torch.tensor([-1]))  # padding draft
    assert torch.equal(acc, torch.tensor([False])) and torch.equal(tok, torch.tensor([1]))


def test_target_probs_greedy_one_hot():
    logits = torch.tensor([[0.0, 3.0, 3.0, -1.0], [5.0, 1.0, 0.0, 0.0]])
    probs = V.target_probs(logits, torch.tensor([0.0, 1e-6]), torch.tensor([1, 2]))
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def test_draft_proposal_greedy_exact():
    draft_vocab = torch.tensor([2, 5, 7, 11])
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0], [4.0, 0.0, 4.0, 1.0]])
    tok, q = V.draft_proposal(logits, draft_vocab, torch.zeros(2))
    assert torch.equal(tok, torch.tensor([5, 2]))
    assert torch.equal(q, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def test_scatter_and_acceptance_probability():
    q = torch.tensor([[0.25, 0.75]])
    ids = torch.tensor([1, 3])
    assert torch.equal(V.scatter_draft_probs(q, ids, 4), torch.tensor([[0.0, 0.25, 0.0, 0.75]]))
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(V.acceptance_probability(p, q, ids), torch.tensor([0.25]))


# --------------------------------------------------------------------------
# mixed batch, edge rows
# --------------------------------------------------------------------------


def test_verify_mixed_batch():
    vocab = 8
    draft_vocab = torch.tensor([0, 1, 2, 3, 5, 6])  # lacks 4 and 7
    logits = torch.tensor(
        [
            [0.0, 1.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # greedy, argmax 2
            [0.0, 1.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # greedy, argmax 2
            [0.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # sampled top_k=1 -> p = e_1
            [0.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # sampled top_k=1 -> p = e_1
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # sampled, uniform p
            [-9.0, 2.0, 1.0, 0.5, -9.0, -9.0, -9.0, -9.0],  # sampled, p == q, padded
        ]
    )
    temp = torch.tensor([0.0, 0.0, 1.0, 0.7, 1.0, 1.0])
    top_k = torch.tensor([0, 0, 1, 1, 0, 3])
    draft = torch.tensor([2, 3, 1, 3, 4, -1])
    p = V.target_probs(logits, temp, top_k)
    q = torch.full((6, 6), 1 / 6)
    q[5] = p[5][draft_vocab]  # proposal identical to p: residual mass 0 -> fallback p
    acc, tok = V.verify(logits, draft, q, draft_vocab, temp, top_k)
    assert torch.equal(acc, torch.tensor([True, False, True, False, False, False]))
    assert torch.equal(tok[:4], torch.tensor([2, 2, 1, 1]))
    # row 4: draft 4 is outside the draft vocab (q(x)=0) -> rejected, token from
    # residual = p - q_full, whose mass is on tokens 4 and 7 only
    assert int(tok[4]) in (4, 7)
    # row 5: fallback to p (support {1, 2, 3})
    assert int(tok[5]) in (1, 2, 3)
    # greedy rows agree with verify_greedy, hint path agrees too
    g_acc, g_tok = V.verify_greedy(logits[:2], draft[:2])
    a2, t2 = V.verify(logits[:2], draft[:2], q[:2], draft_vocab, temp[:2], all_greedy=True)
    a3, t3 = V.verify(logits[:2], draft[:2], q[:2], draft_vocab, temp[:2])
    for a, t in ((a2, t2), (a3, t3)):
        assert torch.equal(a, g_acc) and torch.equal(t, g_tok)


def test_draft_proposal_mixed_batch():
    draft_vocab = torch.tensor([3, 4, 8, 9, 10])
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    temp = torch.tensor([0.0, 1.0, 0.0, 0.8])
    top_k = torch.tensor([0, 3, 0, 0])
    tok, q = V.draft_proposal(logits, draft_vocab, temp, top_k)
    torch.testing.assert_close(q, V.target_probs(logits, temp, top_k))
    assert torch.equal(tok[[0, 2]], draft_vocab[logits[[0, 2]].argmax(-1)])
    idx = torch.searchsorted(draft_vocab, tok)
    assert torch.equal(draft_vocab[idx], tok)  # all tokens in the draft vocab
    assert bool((q[torch.arange(4), idx] > 0).all())  # never a zero-q token


# --------------------------------------------------------------------------
# seeded reproducibility
# --------------------------------------------------------------------------


def _seeded_cycles(batch_logits, row_gens, cycles=30):
    """Run draft_proposal + verify `cycles` times; returns stacked (draft, acc, tok)."""
    draft_vocab = torch.tensor([0, 2, 3, 5, 7, 8, 9])
    tgt, drf = batch_logits
    temp = torch.full((tgt.shape[0],), 0.9)
    top_p = torch.full((tgt.shape[0],), 0.95)
    gens = {i: torch.Generator().manual_seed(s) for i, s in row_gens.items()}
    out = []
    for _ in range(cycles):
        d, q = V.draft_proposal(drf, draft_vocab, temp, None, top_p, None, gens)
        a, t = V.verify(tgt, d, q, draft_vocab, temp, None, top_p, None, gens)
        out.append(torch.stack([d, a.long(), t]))
    return torch.stack(out)  # [cycles, 3, B]


def test_seeded_runs_reproducible_and_batch_independent():
    g = torch.Generator().manual_seed(7)
    tgt, drf = torch.randn(4, 10, generator=g), torch.randn(4, 7, generator=g)
    r1 = _seeded_cycles((tgt, drf), {0: 11, 2: 22})
    r2 = _seeded_cycles((tgt, drf), {0: 11, 2: 22})
    assert torch.equal(r1[:, :, [0, 2]], r2[:, :, [0, 2]])
    # a seeded row gives the same stream alone, at another index, with other rows
    alone = _seeded_cycles((tgt[2:3], drf[2:3]), {0: 22})
    assert torch.equal(alone[:, :, 0], r1[:, :, 2])
    moved = _seeded_cycles((tgt[[1, 0]], drf[[1, 0]]), {1: 11})
    assert torch.equal(moved[:, :, 1], r1[:, :, 0])
    # and the stream is actually random (not a constant) and seed-dependent
    assert len(set(r1[:, 0, 0].tolist())) > 1
    assert bool(r1[:, 1, 0].any()) and not bool(r1[:, 1, 0].all())
    other = _seeded_cycles((tgt, drf), {0: 12, 2: 22})
    assert not torch.equal(other[:, :, 0], r1[:, :, 0])


def test_default_rng_reproducible():
    g = torch.Generator().manual_seed(9)
    tgt, drf = torch.randn(5, 10, generator=g), torch.randn(5, 7, generator=g)
    torch.manual_seed(123)
    r1 = _seeded_cycles((tgt, drf), {}, cycles=5)
    torch.manual_seed(123)
    r2 = _seeded_cycles((tgt, drf), {}, cycles=5)
    assert torch.equal(r1, r2)


# --------------------------------------------------------------------------
# statistical losslessness
# --------------------------------------------------------------------------

N_TRIALS = 200_000
VOCAB = 20
# the draft vocab lacks 3, 7, 10, 13, 16
DRAFT_VOCAB = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 19])
PARAMS = dict(temperature=0.9, top_k=14, top_p=0.92, min_p=0.02)


def _stat_setup():
    g = torch.Generator().manual_seed(2024)
    tgt_logits = torch.randn(1, VOCAB, generator=g) * 1.5
    drf_logits = torch.randn(1, len(DRAFT_VOCAB), generator=g) * 1.5
    n = N_TRIALS
    rows = {k: torch.full((n,), v) for k, v in PARAMS.items()}
    rows["top_k"] = rows["top_k"].long()
    p1 = V.target_probs(tgt_logits, **{k: v[:1] for k, v in rows.items()})
    # the proposal is warped with the same request settings, over the draft vocab
    draft, q = V.draft_proposal(
        drf_logits.expand(n, -1),
        DRAFT_VOCAB,
        rows["temperature"],
        rows["top_k"],
        rows["top_p"],
        rows["min_p"],
        {0: torch.Generator().manual_seed(1)},
    )
    return p1[0], p1.expand(n, -1), draft, q


def _sample_rows(probs, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, 1, generator=g).squeeze(1)


def broken_always_accept(p, draft, q, dv, gens):
    return torch.ones_like(draft, dtype=torch.bool), draft


def broken_resample_from_p(p, draft, q, dv, gens):
    acc, _ = V.verify_sampled(p, draft, q, dv, gens)
    return acc, torch.where(acc, draft, _sample_rows(p, 5))


def broken_ignore_q_ratio(p, draft, q, dv, gens):
    # accept w.p. p(x) instead of min(1, p(x)/q(x)); residual as the real one
    _, tok = V.verify_sampled(p, draft, q, dv, gens)
    u = torch.rand(draft.shape, generator=torch.Generator().manual_seed(6))
    acc = u < p.gather(1, draft[:, None]).squeeze(1)
    return acc, torch.where(acc, draft, tok)


def broken_argmax_residual(p, draft, q, dv, gens):
    acc, _ = V.verify_sampled(p, draft, q, dv, gens)
    resid = (p - V.scatter_draft_probs(q, dv, p.shape[1])).clamp_min(0)
    return acc, torch.where(acc, draft, resid.argmax(-1))


VERIFIERS = {
    "correct": V.verify_sampled,
    "always_accept": broken_always_accept,
    "resample_from_p": broken_resample_from_p,
    "ignore_q_ratio": broken_ignore_q_ratio,
    "argmax_residual": broken_argmax_residual,
}


@pytest.fixture(scope="module")
def stat_setup():
    return _stat_setup()


def test_stat_setup_is_nontrivial(stat_setup):
    p, _, draft, q = stat_setup
    q_full = V.scatter_draft_probs(q[:1], DRAFT_VOCAB, VOCAB)[0]
    missing = torch.ones(VOCAB, dtype=torch.bool)
    missing[DRAFT_VOCAB] = False
    assert p[missing].sum() > 0.05  # mass only reachable through rejection
    assert q_full[p == 0].sum() > 0.02  # proposal wastes mass on tokens p forbids
    assert 0.3 < float(torch.minimum(p, q_full).sum()) < 0.9
    assert int((p == 0).sum()) >= 4  # top-k/top-p/min-p are active
    # the draft samples themselves follow q
    assert chi2_pvalue(torch.bincount(draft, minlength=VOCAB), q_full) > 1e-3


@pytest.mark.parametrize("name", list(VERIFIERS))
def test_lossless_chi_square(stat_setup, name):
    p, p_rows, draft, q = stat_setup
    torch.manual_seed(0)
    gens = {0: torch.Generator().manual_seed(2)}
    acc, tok = VERIFIERS[name](p_rows, draft, q, DRAFT_VOCAB, gens)
    pval = chi2_pvalue(torch.bincount(tok, minlength=VOCAB), p)
    if name == "correct":
        assert pval > 1e-3, pval
    else:  # the same test must catch a broken verifier
        assert pval < 1e-9, (name, pval)


def test_acceptance_rate_matches_theory(stat_setup):
    p, p_rows, draft, q = stat_setup
    torch.manual_seed(1)
    acc, _ = V.verify_sampled(p_rows, draft, q, DRAFT_VOCAB)
    alpha = float(V.acceptance_probability(p[None], q[:1], DRAFT_VOCAB))
    q_full = V.scatter_draft_probs(q[:1], DRAFT_VOCAB, VOCAB)[0]
    assert alpha == pytest.approx(float(torch.minimum(p, q_full).sum()))
    sigma = (alpha * (1 - alpha) / N_TRIALS) ** 0.5
    assert abs(float(acc.float().mean()) - alpha) < 5 * sigma
