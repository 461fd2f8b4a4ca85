"""Sampled SPD output follows the target distribution (statistical test), and the
same test fails when verification is deliberately broken.

1500 seeded requests sample 3 tokens at temperature 1 with top_k=4 from a fixed
prompt; the joint law of the first two tokens (the second one is SPD's first
verified draft) is compared with the exact target law computed by transformers.
"""

import gc

import pytest
import torch

from spd_models import mirror_head, predictable_target
from vllm_spd.core import verify
from vllm_spd.engine import runner as spd_runner
from vllm_spd.head import init_head

PROMPT = "def fibonacci(n):"
N = 1500
TOP_K = 4


def sample_pairs(model, spec, prompt=PROMPT, n=N, **extra):
    """``n`` seeded requests sampling 3 tokens at T=1 (top-k, and ``extra`` sampling
    parameters) from ``prompt`` (text or token ids): (prompt ids, first two tokens per
    request, draft counters)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              speculative_config=spec, disable_log_stats=False)
    params = [SamplingParams(max_tokens=3, temperature=1.0, top_k=TOP_K, seed=i, ignore_eos=True, **extra)
              for i in range(n)]
    request = prompt if isinstance(prompt, str) else {"prompt_token_ids": prompt}
    outs = llm.generate([request] * n, params, use_tqdm=False)
    metrics = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    prompt_ids = outs[0].prompt_token_ids
    pairs = [tuple(o.outputs[0].token_ids[:2]) for o in outs]
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return prompt_ids, pairs, metrics


def exact_pair_law(model, prompt_ids, repetition=1.0, presence=0.0):
    """P(x1, x2) under temperature 1 + top-k, from transformers in float32; with the
    repetition penalty (over prompt and output) and presence penalty (output) applied
    first, as OpenAI and vLLM define them."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def law(ids):
        with torch.no_grad():
            logits = m(torch.tensor([ids])).logits[0, -1]
        seen = torch.tensor(sorted(set(ids)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / repetition, logits[seen] * repetition)
        out = torch.tensor(sorted(set(ids[len(prompt_ids):])), dtype=torch.int64)
        logits[out] -= presence
        top = logits.topk(TOP_K)
        return dict(zip(top.indices.tolist(), torch.softmax(top.values, -1).tolist()))

    joint = {}
    for x1, p1 in law(prompt_ids).items():
        for x2, p2 in law(prompt_ids + [x1]).items():
            joint[(x1, x2)] = p1 * p2
    return joint


def chi_square_pvalue(pairs, joint):
    outside = [p for p in pairs if p not in joint]
    if outside:
        return 0.0
    cats = sorted(joint, key=joint.get, reverse=True)
    expected = torch.tensor([joint[c] * len(pairs) for c in cats], dtype=torch.float64)
    observed = torch.tensor([sum(p == c for p in pairs) for c in cats], dtype=torch.float64)
    big = expected >= 5
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    obs = torch.cat([observed[big], observed[~big].sum().reshape(1)])
    keep = exp > 0
    exp, obs = exp[keep], obs[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = int(exp.numel()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(stat / 2.0)))


def always_accept(logits, drafts, qs, samplings, draft_vocab):
    d = torch.tensor(drafts)
    accepted = d >= 0
    return accepted, torch.where(accepted, d, logits.argmax(-1))


def always_accept_sampled(p, draft_ids, q, draft_token_ids, generators=None, uniform=None, noise=None):
    accepted = draft_ids >= 0
    return accepted, torch.where(accepted, draft_ids, p.argmax(-1))


@pytest.fixture(scope="module")
def predictable(tiny_qwen3, tmp_path_factory):
    return predictable_target(tiny_qwen3, str(tmp_path_factory.mktemp("pt") / "target"))


# The random head's drafts are nearly always rejected (the residual path); the mirror
# head's are mostly accepted (the accept path). Breaking verification is detectable
# with the random head, whose proposal differs from the target by construction.
# verdict_lag 1 computes each verdict a cycle before it takes effect (and drops those a
# flush overtakes): the law must not change. With verdict_lag 0 the device cycle serves
# (draws keyed on seed and position), unless switched off (the host cycle, generators).
@pytest.mark.parametrize("head_kind, broken, lag, cycle", [
    ("random_head", False, 0, "device"), ("mirror_head", False, 0, "device"), ("random_head", True, 0, "device"),
    ("random_head", False, 0, "host"), ("random_head", True, 0, "host"),
    ("random_head", False, 1, "host"), ("mirror_head", False, 1, "host")])
def test_sampled_output_follows_target(head_kind, broken, lag, cycle, tiny_qwen3, predictable, tmp_path,
                                       monkeypatch):
    head = str(tmp_path / "head")
    if head_kind == "random_head":
        model = tiny_qwen3
        init_head(model, 2, head)
    else:
        model = predictable
        mirror_head(model, 2, head)
    monkeypatch.setenv("VLLM_SPD_DEVICE_CYCLE", "1" if cycle == "device" else "0")
    if broken and cycle == "host":
        monkeypatch.setattr(spd_runner, "verify_drafts", always_accept)
    elif broken:   # breaks the device cycle's verification only: caught only if it served
        monkeypatch.setattr(verify, "verify_sampled", always_accept_sampled)
    prompt_ids, pairs, metrics = sample_pairs(model, {"method": "spd", "num_stages": 2, "model": head,
                                                      "verdict_lag": lag})
    pvalue = chi_square_pvalue(pairs, exact_pair_law(model, prompt_ids))
    if broken:
        assert pvalue < 1e-6, f"broken verification went unnoticed (p={pvalue:.3g})"
    else:
        assert pvalue > 1e-3, f"SPD sampling does not follow the target (p={pvalue:.3g})"
        assert metrics["vllm:spec_decode_num_drafts"] == 2 * N
        alpha = metrics["vllm:spec_decode_num_accepted_tokens"] / metrics["vllm:spec_decode_num_drafts"]
        assert (alpha > 0.5) if head_kind == "mirror_head" else (alpha < 0.2), alpha


@pytest.fixture(scope="module")
def lead_prompt(predictable):
    """A prompt led by some of the target's likely first tokens, so that prompt lookup
    (ngram_max 1) matches in part of the samples: the lead is grown until it holds
    30-90% of the target's top-k mass after the prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(predictable, dtype=torch.float32).eval()
    base = AutoTokenizer.from_pretrained(predictable).encode(PROMPT)
    lead: list[int] = []
    for _ in range(40):
        with torch.no_grad():
            top = m(torch.tensor([lead + base])).logits[0, -1].topk(TOP_K)
        probs = torch.softmax(top.values, -1).tolist()
        share = sum(q for t, q in zip(top.indices.tolist(), probs) if t in lead)
        if 0.3 < share < 0.9:
            return lead + base
        lead += [t for t in top.indices.tolist() if t not in lead][:1]
    pytest.fail("no lead found that covers part of the target's top-k")


HYBRID = {"method": "spd", "num_stages": 2, "drafter": "hybrid", "hybrid_min_match": 1, "ngram_max": 1}


def test_hybrid_sampling_follows_target(predictable, lead_prompt, tmp_path):
    """The hybrid drafter mixes two proposals: prompt lookup (deterministic, one-hot q)
    where the newest token occurred before, the head's sampled draft elsewhere; here
    lookup is on for sampled requests too (hybrid_max_temperature 1). The mirror head's
    q is close to the target's p, so verifying a looked-up token against the head's q
    instead of a one-hot q would bias the output."""
    head = mirror_head(predictable, 2, str(tmp_path / "head"))
    _, pairs, _ = sample_pairs(predictable, {**HYBRID, "model": head, "hybrid_max_temperature": 1.0}, lead_prompt)
    looked_up = sum(x1 in lead_prompt for x1, _ in pairs) / len(pairs)
    assert 0.2 < looked_up < 0.95, f"both proposals must be exercised (lookup share {looked_up:.2f})"
    pvalue = chi_square_pvalue(pairs, exact_pair_law(predictable, lead_prompt))
    assert pvalue > 1e-3, f"hybrid SPD sampling does not follow the target (p={pvalue:.3g})"


def test_hybrid_keeps_the_head_for_sampled_requests(predictable, lead_prompt, tmp_path):
    """By default (hybrid_max_temperature 0) prompt lookup drafts for greedy requests
    only: seeded T=1 requests get exactly the head drafter's tokens and verdicts, while
    with lookup allowed at T=1 the same requests draft differently."""
    head = mirror_head(predictable, 2, str(tmp_path / "head"))
    n = 200
    plain = sample_pairs(predictable, {**HYBRID, "drafter": "head", "model": head}, lead_prompt, n)[1:]
    gated = sample_pairs(predictable, {**HYBRID, "model": head}, lead_prompt, n)[1:]
    open_ = sample_pairs(predictable, {**HYBRID, "model": head, "hybrid_max_temperature": 1.0}, lead_prompt, n)[1:]
    assert gated == plain
    assert open_ != plain


@pytest.mark.parametrize("head_kind, broken", [("mirror_head", False), ("random_head", False), ("random_head", True)])
def test_penalized_sampling_follows_target(head_kind, broken, tiny_qwen3, predictable, tmp_path, monkeypatch):
    """Penalties reshape the target law from the committed output (the second token's
    law depends on the first); SPD's samples follow the penalized law, through the
    accept path (mirror head) and the residual path (random head). Dropping the
    penalties at verification is detected."""
    from vllm_spd.engine import target_rules

    model = predictable if head_kind == "mirror_head" else tiny_qwen3
    head = str(tmp_path / "head")
    if head_kind == "mirror_head":
        mirror_head(model, 2, head)
    else:
        init_head(model, 2, head)
    if broken:
        monkeypatch.setattr(target_rules, "apply_rules", lambda logits, rules, outputs: None)
    penalties = dict(repetition=1.5, presence=2.0)
    prompt_ids, pairs, _ = sample_pairs(model, {"method": "spd", "num_stages": 2, "model": head},
                                        repetition_penalty=penalties["repetition"],
                                        presence_penalty=penalties["presence"])
    pvalue = chi_square_pvalue(pairs, exact_pair_law(model, prompt_ids, **penalties))
    if broken:
        assert pvalue < 1e-6, f"dropped penalties went unnoticed (p={pvalue:.3g})"
    else:
        assert pvalue > 1e-3, f"penalized SPD sampling does not follow the target (p={pvalue:.3g})"
