"""Greedy SPD inside vLLM is token-identical to plain vLLM greedy decoding.

20 prompts x 64 new tokens, all in flight together, float32 on CPU, for
num_stages 1..4, with a random head (drafts nearly always wrong: a flush per token),
a head whose drafts are mostly right, and the weightless ngram drafter.
"""

import gc

import pytest

from spd_models import mirror_head, predictable_target
from vllm_spd.head import init_head

PROMPTS = [
    "def fibonacci(n):", "The capital of France is", "import numpy as np\n", "class Stack:",
    "Once upon a time", "for i in range(10):", "SELECT * FROM users WHERE", "Dear hiring manager,",
    "The quick brown fox", "# Sort a list of numbers", "while True:", "Q: What is 2+2?\nA:",
    "Translate to German: good morning", "return x if", "The three laws of motion are",
    "try:\n    open(", "Water boils at", "In 1969, the first", "lambda x:", "List of prime numbers: 2, 3, 5,",
]
MAX_TOKENS = 64


def generate(model, spec=None, max_tokens=MAX_TOKENS, prompts=PROMPTS):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec, disable_log_stats=False)
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
    counters = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return outs, counters


@pytest.fixture(scope="module")
def tiny_reference(tiny_qwen3):
    return generate(tiny_qwen3)[0]


@pytest.fixture(scope="module")
def predictable(tiny_qwen3, tmp_path_factory):
    target = predictable_target(tiny_qwen3, str(tmp_path_factory.mktemp("pt") / "target"))
    return target, generate(target)[0]


def assert_identical(ref, out):
    for i, (r, o) in enumerate(zip(ref, out)):
        assert o == r, f"prompt {i}: first difference at token {next(j for j, (a, b) in enumerate(zip(r, o)) if a != b)}"


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_random_head_matches_plain(tiny_qwen3, tiny_reference, num_stages, tmp_path):
    head = str(tmp_path / "head")
    init_head(tiny_qwen3, num_stages, head, num_draft_layers=2)
    out, counters = generate(tiny_qwen3, {"method": "spd", "num_stages": num_stages, "model": head})
    assert_identical(tiny_reference, out)
    # One draft verified per committed token after the first, per request.
    assert counters["vllm:spec_decode_num_drafts"] == len(PROMPTS) * (MAX_TOKENS - 1)


@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_verdict_lag_matches_plain(predictable, num_stages, tmp_path):
    """verdict_lag 1 (verdicts take effect a cycle after they are computed): exact, and a
    mostly-right head's late verdicts are used (alpha stays high)."""
    target, reference = predictable
    head = mirror_head(target, num_stages, str(tmp_path / "head"))
    out, counters = generate(target, {"method": "spd", "num_stages": num_stages, "model": head,
                                      "verdict_lag": 1})
    assert_identical(reference, out)
    assert counters["vllm:spec_decode_num_drafts"] == len(PROMPTS) * (MAX_TOKENS - 1)
    alpha = counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_draft_tokens"]
    assert alpha > 0.6, f"alpha={alpha:.2f}"


def test_draft_module_paths_agree(predictable, tmp_path, monkeypatch):
    """The draft module's fixed-shape path (persistent buffers, fixed metadata bounds:
    what a GPU replays from CUDA graphs) drafts exactly what the eager path drafts."""
    target, reference = predictable
    head = mirror_head(target, 3, str(tmp_path / "head"))
    spec = {"method": "spd", "num_stages": 3, "model": head}
    counts = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("VLLM_SPD_DRAFT_GRAPHS", switch)
        out, counters = generate(target, spec, prompts=PROMPTS[:6])
        assert_identical(reference, out)
        counts[switch] = counters
    assert counts["1"] == counts["0"]
    assert counts["1"]["vllm:spec_decode_num_accepted_tokens"] > 0


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_mostly_right_head_matches_plain(predictable, num_stages, tmp_path):
    target, reference = predictable
    head = mirror_head(target, num_stages, str(tmp_path / "head"))
    out, counters = generate(target, {"method": "spd", "num_stages": num_stages, "model": head,
                                      "cycles_per_step": 3 * num_stages})
    assert_identical(reference, out)
    alpha = counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_draft_tokens"]
    assert alpha > 0.6, f"the mirror head should draft mostly right, alpha={alpha:.2f}"


@pytest.mark.parametrize("num_stages", [2, 4])
def test_ngram_drafter_matches_plain(tiny_qwen3, tiny_reference, num_stages):
    out, _ = generate(tiny_qwen3, {"method": "spd", "num_stages": num_stages, "drafter": "ngram"})
    assert_identical(tiny_reference, out)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    return generate(smollm2)[0]


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_smollm2_random_head_matches_plain(smollm2, smollm2_reference, num_stages, tmp_path):
    head = str(tmp_path / "head")
    init_head(smollm2, num_stages, head)
    out, _ = generate(smollm2, {"method": "spd", "num_stages": num_stages, "model": head})
    assert_identical(smollm2_reference, out)


def test_smollm2_shipped_head_matches_plain(smollm2, smollm2_reference):
    # No "model": the int8 head shipped in vllm_spd/heads/ for this target at n=4 drafts.
    out, counters = generate(smollm2, {"method": "spd", "num_stages": 4, "drafter": "head"})
    assert_identical(smollm2_reference, out)
    alpha = counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_draft_tokens"]
    assert alpha > 0.3, f"a trained head drafts far better than chance, alpha={alpha:.2f}"


def test_smollm2_ngram_matches_plain(smollm2, smollm2_reference):
    out, counters = generate(smollm2, {"method": "spd", "num_stages": 4, "drafter": "ngram"})
    assert_identical(smollm2_reference, out)
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0


def test_smollm2_hybrid_drafter_matches_plain(smollm2, smollm2_reference, tmp_path):
    """Head drafts, overridden by prompt lookup where it matches 2+ tokens: a random head
    is almost never right, so accepted drafts come from the lookups."""
    head = str(tmp_path / "head")
    init_head(smollm2, 3, head)
    out, counters = generate(smollm2, {"method": "spd", "num_stages": 3, "model": head, "drafter": "hybrid",
                                       "hybrid_min_match": 2})
    assert_identical(smollm2_reference, out)
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0.05 * counters["vllm:spec_decode_num_draft_tokens"]


def test_preemption_keeps_output_exact(tiny_qwen3, tmp_path):
    """A KV cache too small for every request at once forces vLLM to preempt requests
    mid-decode (their in-flight SPD state is dropped) and to recompute them later."""
    from vllm import LLM, SamplingParams

    head = str(tmp_path / "head")
    init_head(tiny_qwen3, 3, head)
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    results = []
    for spec in (None, {"method": "spd", "num_stages": 3, "model": head}):
        llm = LLM(model=tiny_qwen3, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
                  block_size=32, num_gpu_blocks_override=24, disable_log_stats=False, speculative_config=spec)
        out = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        preemptions = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        results.append((out, preemptions))
    (reference, _), (out, preemptions) = results
    assert preemptions > 0, "the test needs preemptions to mean anything"
    assert_identical(reference, out)


def test_stops_inside_the_window_match_plain(smollm2, tmp_path):
    """EOS, stop strings, stop token ids and max_tokens may fall inside SPD's in-flight
    window; text, tokens and finish reasons must equal plain decoding's."""
    from vllm import LLM, SamplingParams

    head = str(tmp_path / "head")
    init_head(smollm2, 4, head)
    messages = [[{"role": "user", "content": q}] for q in
                ("What is the capital of France?", "Count from one to ten in words.",
                 "Name three colours.", "Write one short sentence about the sea.")]
    params = [SamplingParams(max_tokens=48, temperature=0.0),                      # EOS
              SamplingParams(max_tokens=48, temperature=0.0, stop=["five", "5"]),   # stop string
              SamplingParams(max_tokens=48, temperature=0.0, stop_token_ids=[28]),  # "," in SmolLM2
              SamplingParams(max_tokens=7, temperature=0.0, min_tokens=3)]          # max_tokens
    results = []
    spd = {"method": "spd", "num_stages": 4, "model": head, "cycles_per_step": 8}
    for spec in (None, spd, {**spd, "verdict_lag": 1}):
        llm = LLM(model=smollm2, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
                  speculative_config=spec)
        outs = llm.chat(messages, params, use_tqdm=False)
        results.append([(o.outputs[0].text, list(o.outputs[0].token_ids), o.outputs[0].finish_reason,
                         o.outputs[0].stop_reason) for o in outs])
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    plain, *spd = results
    assert spd == [plain, plain]    # verdict_lag 0 and 1
    assert [r[2] for r in plain] == ["stop", "stop", "stop", "length"]
    assert plain[1][3] in ("five", "5") and plain[2][3] == 28   # the stop string / id really fired


def test_periodic_log_line(tiny_qwen3, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="vllm_spd")
    spd_logger = logging.getLogger("vllm_spd")   # it does not propagate: vLLM's handler writes it
    spd_logger.addHandler(caplog.handler)
    try:
        generate(tiny_qwen3, {"method": "spd", "num_stages": 2, "log_interval_s": 1e-6}, max_tokens=8,
                 prompts=PROMPTS[:2])
    finally:
        spd_logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spd: alpha=")]
    assert lines and "tokens/cycle" in lines[-1]


def test_chunked_prefill_mixed_with_decoding(tiny_qwen3, tmp_path):
    """Long prompts prefilled in chunks over several steps while other requests are
    already decoding in the same steps."""
    from vllm import LLM, SamplingParams

    head = str(tmp_path / "head")
    init_head(tiny_qwen3, 4, head)
    prompts = [p * (1 + 7 * (i % 4)) for i, p in enumerate(PROMPTS[:8])]   # 1..~200 tokens
    sp = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    results = []
    for spec in (None, {"method": "spd", "num_stages": 4, "model": head}):
        llm = LLM(model=tiny_qwen3, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
                  enable_chunked_prefill=True, max_num_batched_tokens=48, speculative_config=spec)
        results.append([list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)])
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    assert_identical(*results)


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_oracle_drafter_hits_its_alpha(tiny_qwen3, tiny_reference, alpha, tmp_path):
    """The benchmark instrument: recorded greedy tokens proposed with probability alpha."""
    from transformers import AutoTokenizer

    from vllm_spd.drafters.oracle import save_recording

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    rec = str(tmp_path / "rec.json")
    save_recording(rec, [tok.encode(p) for p in PROMPTS], tiny_reference)
    out, counters = generate(tiny_qwen3, {"method": "spd", "num_stages": 3, "drafter": "oracle",
                                          "oracle_tokens": rec, "oracle_alpha": alpha})
    assert_identical(tiny_reference, out)
    measured = counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_draft_tokens"]
    assert abs(measured - alpha) < 0.06, measured


def test_drafts_do_not_depend_on_in_place_norms(predictable, tmp_path, monkeypatch):
    """On CUDA, vLLM's fused add + RMSNorm writes the residual (and the input) in place;
    on CPU it does not. SPD must draft the same either way: no anchor it keeps (the
    prompt's embeddings included) may alias a buffer the target's layers update."""
    from vllm.model_executor.layers.layernorm import RMSNorm

    target, reference = predictable
    head = mirror_head(target, 2, str(tmp_path / "head"), context=1.0)
    spec = {"method": "spd", "num_stages": 2, "model": head}
    native = RMSNorm.forward_native

    def in_place(self, x, residual=None):
        out = native(self, x, residual)
        if residual is None:
            return out
        normed, summed = out
        residual.copy_(summed)
        x.copy_(normed)
        return x, residual

    _, counts_native = generate(target, spec, prompts=PROMPTS[:8])
    monkeypatch.setattr(RMSNorm, "forward_native", in_place)
    out, counts_in_place = generate(target, spec, prompts=PROMPTS[:8])
    assert_identical(reference[:8], out)
    assert counts_in_place == counts_native
    assert counts_native["vllm:spec_decode_num_accepted_tokens"] > 0
