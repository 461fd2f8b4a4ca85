"""Requests with penalties, bad words, allowed tokens, logit bias, logprobs, prompt
logprobs and n > 1 get exactly what plain vLLM gives them (float32 on CPU), in one
worker (host cycle at verdict_lag 0 and 1) and across two pipeline ranks.

Every feature is checked to change the output (or to return data) in the reference
run, so a feature SPD silently dropped could not pass.
"""

import gc
import math

import pytest

from spd_models import mirror_head, predictable_target

PROMPTS = ["def fibonacci(n):", "The capital of France is", "for i in range(10):", "class Stack:",
           "Once upon a time", "SELECT * FROM users WHERE", "import numpy as np\n"]
MAX_TOKENS = 32


@pytest.fixture(autouse=True)
def _cpu_binding(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")   # pipeline ranks: one thread each, placed by the OS


def run(model, requests, spec=None, logprobs_mode=None):
    """``requests``: (prompt, SamplingParams) pairs -> vLLM's RequestOutputs, in order."""
    from vllm import LLM

    kw = {"logprobs_mode": logprobs_mode} if logprobs_mode else {}
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec, **kw)
    outs = llm.generate([p for p, _ in requests], [sp for _, sp in requests], use_tqdm=False)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return outs


def feature_requests(tokenizer, plain_outputs):
    """One request per feature, each on its own prompt, greedy; bad words are taken from
    the plain output so that they must be avoided."""
    from vllm import SamplingParams

    def sp(**kw):
        return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, **kw)

    out0 = plain_outputs[0]
    bad = next(tokenizer.decode(out0[i:i + 2]) for i in range(2, 20)
               if tokenizer.encode(tokenizer.decode(out0[i:i + 2]), add_special_tokens=False) == out0[i:i + 2])
    return [
        (PROMPTS[0], sp(bad_words=[bad, tokenizer.decode(plain_outputs[0][0:1])], logprobs=2)),
        (PROMPTS[1], sp(repetition_penalty=1.4, logprobs=3)),
        (PROMPTS[2], sp(presence_penalty=1.0, frequency_penalty=0.7, prompt_logprobs=2)),
        (PROMPTS[3], sp(logit_bias={plain_outputs[3][5]: -30.0, 100: 6.0})),
        (PROMPTS[4], sp(allowed_token_ids=list(range(100, 600)), logprobs=1)),
        (PROMPTS[5], sp(logprobs=2, prompt_logprobs=1)),
        (PROMPTS[6], sp()),
    ]


@pytest.fixture(scope="module")
def setup(tiny_qwen3, tmp_path_factory):
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    target = predictable_target(tiny_qwen3, str(tmp_path_factory.mktemp("pt") / "target"))
    plain = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    plain_out = [list(o.outputs[0].token_ids) for o in run(target, [(p, plain) for p in PROMPTS])]
    requests = feature_requests(AutoTokenizer.from_pretrained(target), plain_out)
    head = mirror_head(target, 2, str(tmp_path_factory.mktemp("head") / "head"))
    return target, head, plain_out, requests


def logprob_table(entries):
    return None if entries is None else [
        None if d is None else {t: (lp.logprob, lp.rank) for t, lp in d.items()} for d in entries]


def assert_same_logprobs(ref, got, what):
    ref, got = logprob_table(ref), logprob_table(got)
    assert (ref is None) == (got is None), what
    if ref is None:
        return
    assert len(ref) == len(got), what
    for i, (a, b) in enumerate(zip(ref, got)):
        assert (a is None) == (b is None), f"{what} at {i}"
        if a is None:
            continue
        assert a.keys() == b.keys(), f"{what} at {i}: {a} vs {b}"
        for t in a:
            assert a[t][1] == b[t][1], f"{what} at {i}: rank of {t}"
            assert math.isclose(a[t][0], b[t][0], rel_tol=1e-5, abs_tol=1e-5), f"{what} at {i}: {a[t]} vs {b[t]}"


@pytest.mark.parametrize("placement, lag, mode", [
    ("single_worker", 0, None), ("single_worker", 1, None), ("single_worker", 0, "processed_logprobs"),
    ("pipeline", 0, None), ("pipeline", 1, None)])
def test_features_match_plain(setup, placement, lag, mode):
    target, head, plain_out, requests = setup
    ref = run(target, requests, logprobs_mode=mode)
    for i, o in enumerate(ref[:5]):   # every feature changes the greedy output
        assert list(o.outputs[0].token_ids) != plain_out[i], f"feature of request {i} changed nothing"
    spec = {"method": "spd", "num_stages": 2, "model": head, "verdict_lag": lag, "stage_placement": placement}
    got = run(target, requests, spec, logprobs_mode=mode)
    for i, (a, b) in enumerate(zip(ref, got)):
        assert list(b.outputs[0].token_ids) == list(a.outputs[0].token_ids), f"request {i}"
        assert_same_logprobs(a.outputs[0].logprobs, b.outputs[0].logprobs, f"request {i} logprobs")
        assert_same_logprobs(a.prompt_logprobs, b.prompt_logprobs, f"request {i} prompt logprobs")
    assert got[5].outputs[0].logprobs and got[5].prompt_logprobs


def test_logprob_token_ids_match_plain(setup):
    """logprob_token_ids: those tokens' logprobs for each committed token. (Kept apart from
    top-k logprob requests: in plain vLLM 0.32 a batch holding both reports the top-k
    requests' logprobs wrongly.)"""
    from vllm import SamplingParams

    target, head, _, _ = setup
    requests = [(PROMPTS[i], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True,
                                            logprob_token_ids=[5, 17, 100][:i + 2], repetition_penalty=1.2))
                for i in range(2)]
    ref = run(target, requests)
    got = run(target, requests, {"method": "spd", "num_stages": 2, "model": head})
    for i, (a, b) in enumerate(zip(ref, got)):
        assert list(b.outputs[0].token_ids) == list(a.outputs[0].token_ids), f"request {i}"
        assert_same_logprobs(a.outputs[0].logprobs, b.outputs[0].logprobs, f"request {i} logprobs")
        assert all({5, 17} <= set(d) for d in b.outputs[0].logprobs)


def test_sampled_logprobs_are_the_targets(setup):
    """Seeded T=1 requests (their drafts accepted or corrected): the logprobs SPD returns
    for each sampled token are plain vLLM's prompt logprobs of the same sequence."""
    from vllm import SamplingParams

    target, head, _, _ = setup
    spec = {"method": "spd", "num_stages": 2, "model": head}
    sampled = run(target, [(p, SamplingParams(max_tokens=16, temperature=1.0, top_k=20, seed=i, logprobs=2))
                           for i, p in enumerate(PROMPTS)], spec)
    replay = run(target, [({"prompt_token_ids": list(o.prompt_token_ids) + list(o.outputs[0].token_ids)},
                           SamplingParams(max_tokens=1, prompt_logprobs=2)) for o in sampled])
    for o, r in zip(sampled, replay):
        n = len(o.outputs[0].token_ids)
        assert n == 16
        assert_same_logprobs(r.prompt_logprobs[-n:], o.outputs[0].logprobs, "sampled logprobs")


def test_n_greater_than_one(setup):
    """n=3 with a seed: vLLM gives the children seeds 5, 6, 7; they are exactly three
    requests with those seeds, each with its own logprobs."""
    from vllm import SamplingParams

    target, head, _, _ = setup
    spec = {"method": "spd", "num_stages": 2, "model": head}

    def sp(**kw):
        return SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True, logprobs=1, **kw)

    got = run(target, [(PROMPTS[1], sp(n=3, seed=5))] + [(PROMPTS[1], sp(seed=s)) for s in (5, 6, 7)], spec)
    children = sorted(got[0].outputs, key=lambda c: c.index)
    assert [list(c.token_ids) for c in children] == [list(o.outputs[0].token_ids) for o in got[1:]]
    assert len({tuple(c.token_ids) for c in children}) > 1
    for c, o in zip(children, got[1:]):
        assert_same_logprobs(o.outputs[0].logprobs, c.logprobs, "child logprobs")


def structured_requests():
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams as SO

    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["id", "ok"], "additionalProperties": False}

    def sp(so, **kw):
        return SamplingParams(max_tokens=48, temperature=0.0, structured_outputs=so, **kw)

    return [(PROMPTS[0], sp(SO(regex=r"[0-9]{3}-[a-z]{2,4}"))),
            (PROMPTS[1], sp(SO(choice=["alpha", "beta", "gamma"]), logprobs=2)),
            (PROMPTS[2], sp(SO(json=schema))),
            (PROMPTS[3], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True))]


@pytest.mark.parametrize("placement, lag", [("single_worker", 0), ("single_worker", 1), ("pipeline", 1)])
def test_structured_outputs_match_plain(setup, placement, lag):
    """Grammar-constrained output (regex, choice, JSON schema) is plain vLLM's, token for
    token, valid against its grammar, beside an unconstrained request."""
    import json
    import re

    target, head, plain_out, _ = setup
    requests = structured_requests()
    ref = run(target, requests)
    spec = {"method": "spd", "num_stages": 2, "model": head, "verdict_lag": lag, "stage_placement": placement}
    got = run(target, requests, spec)
    for i, (a, b) in enumerate(zip(ref, got)):
        assert list(b.outputs[0].token_ids) == list(a.outputs[0].token_ids), f"request {i}"
        assert_same_logprobs(a.outputs[0].logprobs, b.outputs[0].logprobs, f"request {i} logprobs")
    texts = [o.outputs[0].text for o in got]
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", texts[0]), texts[0]
    assert texts[1] in ("alpha", "beta", "gamma")
    if got[2].outputs[0].finish_reason == "stop":
        assert set(json.loads(texts[2])) == {"id", "ok"}
    assert list(got[3].outputs[0].token_ids) == plain_out[3]
