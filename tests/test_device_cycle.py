"""The device-resident cycle (``device_cycle.py``) inside vLLM, on CPU: greedy output
token-identical to plain vLLM for num_stages 1..4, stop ids, min_tokens and max_tokens
exact inside the window, every draft verdict the same as the host-driven cycle's
(the oracle proposes the same drafts to both), and a step ended early when input waits
for the engine core."""

import gc

import pytest

from test_e2e_greedy import PROMPTS, assert_identical
from vllm_spd.drafters.oracle import save_recording

MAX_TOKENS = 48


def run(model, spec, params, prompts=PROMPTS):
    from vllm import LLM

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec, disable_log_stats=False)
    outs = llm.generate(prompts, params, use_tqdm=False)
    counters = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    steps = llm.collective_rpc(_device_steps)[0] if spec else None
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return outs, counters, steps


def both_cycles(model, spec, params, reference, monkeypatch) -> dict:
    """Run ``spec`` with the device cycle and with the host cycle: both outputs must equal
    ``reference``, the device cycle must have served only when on, and the draft counters
    must agree (the same drafts verified, the same accepted). Returns the counters."""
    results = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("VLLM_SPD_DEVICE_CYCLE", switch)
        outs, counters, steps = run(model, spec, params)
        assert_identical(reference, [list(o.outputs[0].token_ids) for o in outs])
        results[switch] = (counters, steps)
    (on, steps_on), (off, steps_off) = results["1"], results["0"]
    assert steps_on and steps_off is None
    assert on == off
    return on


def _device_steps(worker):
    device = getattr(worker.model_runner, "spd_device", None)
    return None if device is None else device.steps


@pytest.fixture(scope="module")
def recorded(tiny_qwen3, tmp_path_factory):
    from vllm import SamplingParams

    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    outs, _, _ = run(tiny_qwen3, None, sp)
    path = str(tmp_path_factory.mktemp("oracle") / "tokens.json")
    save_recording(path, [o.prompt_token_ids for o in outs], [o.outputs[0].token_ids for o in outs])
    return path, [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_device_cycle_matches_plain_and_host_cycle(tiny_qwen3, recorded, num_stages, monkeypatch):
    from vllm import SamplingParams

    path, reference = recorded
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": num_stages, "drafter": "oracle", "oracle_tokens": path,
            "oracle_alpha": 0.7}
    on = both_cycles(tiny_qwen3, spec, sp, reference, monkeypatch)
    alpha = on["vllm:spec_decode_num_accepted_tokens"] / on["vllm:spec_decode_num_draft_tokens"]
    assert 0.55 < alpha < 0.85, alpha


def test_device_cycle_stops_match_plain(tiny_qwen3, recorded):
    """Stop ids, min_tokens and max_tokens inside the in-flight window."""
    from vllm import SamplingParams

    path, reference = recorded
    prompts = PROMPTS[:6]
    params = []
    for i, ref in enumerate(reference[:6]):
        stop = ref[5 + 2 * i]          # a token the greedy output reaches mid-way
        params.append([SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, stop_token_ids=[stop]),
                       SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, stop_token_ids=[stop],
                                      min_tokens=ref.index(stop) + 3),
                       SamplingParams(max_tokens=7 + i, temperature=0.0, ignore_eos=True)][i % 3])
    plain, _, _ = run(tiny_qwen3, None, params, prompts)
    spec = {"method": "spd", "num_stages": 4, "drafter": "oracle", "oracle_tokens": path, "oracle_alpha": 0.8}
    spd, _, steps = run(tiny_qwen3, spec, params, prompts)
    assert steps
    got = [(list(o.outputs[0].token_ids), o.outputs[0].finish_reason, o.outputs[0].stop_reason) for o in spd]
    want = [(list(o.outputs[0].token_ids), o.outputs[0].finish_reason, o.outputs[0].stop_reason) for o in plain]
    assert got == want
    assert [w[1] for i, w in enumerate(want) if i % 3 != 1] == ["stop", "length"] * 2
    for i in (1, 4):   # min_tokens held the stop token back past its first greedy occurrence
        assert len(want[i][0]) > reference[i].index(params[i].stop_token_ids[0]) + 1


@pytest.fixture(scope="module")
def predictable(tiny_qwen3, tmp_path_factory):
    from vllm import SamplingParams

    from spd_models import predictable_target

    target = predictable_target(tiny_qwen3, str(tmp_path_factory.mktemp("pt") / "target"))
    outs, _, _ = run(target, None, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True))
    return target, [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("num_stages", [2, 4])
def test_device_cycle_draft_module_matches_plain_and_host_cycle(predictable, num_stages, tmp_path, monkeypatch):
    """The draft module drafting inside the device cycle (anchors in a ring on the device,
    its rows at fixed shapes): exact output, and the same drafts and verdicts as the host
    cycle's, with a head whose drafts are mostly right and read earlier rows."""
    from vllm import SamplingParams

    from spd_models import mirror_head

    target, reference = predictable
    head = mirror_head(target, num_stages, str(tmp_path / "head"), context=0.05)
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": num_stages, "model": head}
    on = both_cycles(target, spec, sp, reference, monkeypatch)
    alpha = on["vllm:spec_decode_num_accepted_tokens"] / on["vllm:spec_decode_num_draft_tokens"]
    assert 0.3 < alpha < 0.98, alpha


@pytest.mark.parametrize("num_stages", [1, 3])
def test_device_cycle_ngram_matches_plain_and_host_cycle(tiny_qwen3, recorded, num_stages, monkeypatch):
    """Prompt lookup inside the device cycle: exact output, the host cycle's verdicts."""
    from vllm import SamplingParams

    _, reference = recorded
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": num_stages, "drafter": "ngram"}
    on = both_cycles(tiny_qwen3, spec, sp, reference, monkeypatch)
    assert on["vllm:spec_decode_num_accepted_tokens"] > 0


def test_device_cycle_hybrid_matches_plain_and_host_cycle(predictable, tmp_path, monkeypatch):
    """Hybrid drafting inside the device cycle (the head, overridden by prompt lookup)."""
    from vllm import SamplingParams

    from spd_models import mirror_head

    target, reference = predictable
    head = mirror_head(target, 2, str(tmp_path / "head"), context=0.05)
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": 2, "model": head, "drafter": "hybrid", "hybrid_min_match": 1}
    both_cycles(target, spec, sp, reference, monkeypatch)


def _resident_steps(worker):
    return worker.model_runner.spd_device.resident_steps


def test_resident_rows_survive_batch_changes_and_the_host_cycle(predictable, tmp_path):
    """Rows stay on the device from step to step while the batch holds the same requests,
    and go back to the host whenever it changes: two requests at a time (``max_num_seqs``
    2), six cycles a step, hybrid drafting (the draft module's anchors and prompt lookup's
    history stay resident too). A finishes and C joins, whose logprobs take the host cycle
    for B and C (B's state must come back from the device first); C finishes and D joins
    (the device cycle loads B again); B finishes and D goes on alone. Every output equals
    plain vLLM's, and steps found their rows resident."""
    from vllm import LLM, SamplingParams

    from spd_models import mirror_head

    target, reference = predictable
    head = mirror_head(target, 3, str(tmp_path / "head"), context=0.05)
    lengths = [10, MAX_TOKENS, 16, 30]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True, logprobs=1 if i == 2 else None)
              for i, m in enumerate(lengths)]
    spec = {"method": "spd", "num_stages": 3, "model": head, "drafter": "hybrid", "hybrid_min_match": 1,
            "cycles_per_step": 6}
    llm = LLM(model=target, dtype="float32", enforce_eager=True, max_model_len=512, seed=0, max_num_seqs=2,
              speculative_config=spec)
    try:
        outs = llm.generate(PROMPTS[:4], params, use_tqdm=False)
        got = [list(o.outputs[0].token_ids) for o in outs]
        assert got == [ref[:m] for ref, m in zip(reference[:4], lengths)]
        assert outs[2].outputs[0].logprobs and outs[0].outputs[0].logprobs is None
        assert llm.collective_rpc(_resident_steps)[0] >= 5
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


@pytest.mark.parametrize("device_cycle", ["1", "0"])
def test_a_step_that_prefills_commits_one_token_per_decoding_request(tiny_qwen3, recorded, device_cycle,
                                                                     monkeypatch):
    """B arrives while A decodes (every draft right, four commits a step). The step that
    prefills B commits exactly one token for A, so B's first token waits for one cycle
    of A rather than a whole step; the next step is a whole one again (four cycles). Both
    outputs equal plain vLLM's, with the device cycle and with the host cycle."""
    monkeypatch.setenv("VLLM_SPD_DEVICE_CYCLE", device_cycle)
    path, reference = recorded
    steps = ByHand(tiny_qwen3, path, cycles_per_step=4)
    try:
        steps.add("A", PROMPTS[0])
        steps.until("A", 12)
        steps.add("B", PROMPTS[1])
        steps()
        assert steps.grown[-1] == {"A": 1, "B": 1}
        steps()
        assert steps.grown[-1] == {"A": 4, "B": 3}   # B's first in-flight token takes both stages
        steps.finish()
    finally:
        steps.close()
    assert_identical(reference[:2], [steps.got["A"], steps.got["B"]])


class ByHand:
    """One-worker SPD on ``model`` at n=2 (oracle drafts, every one right, lag 0),
    its engine stepped by hand: each request's tokens so far (``got``) and what each
    step added to each (``grown``)."""

    def __init__(self, model: str, path: str, cycles_per_step: int):
        from vllm import LLM

        spec = {"method": "spd", "num_stages": 2, "drafter": "oracle", "oracle_tokens": path,
                "oracle_alpha": 1.0, "cycles_per_step": cycles_per_step, "verdict_lag": 0}
        self.llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
                       speculative_config=spec)
        self.engine = self.llm.llm_engine
        self.got: dict[str, list[int]] = {}
        self.grown: list[dict[str, int]] = []

    def add(self, req_id: str, prompt: str) -> None:
        """Request ``req_id``: ``prompt``, greedy, ``MAX_TOKENS`` new tokens."""
        from vllm import SamplingParams

        self.engine.add_request(req_id, prompt, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0,
                                                               ignore_eos=True))
        self.got[req_id] = []

    def until(self, req_id: str, tokens: int) -> None:
        """Step until ``req_id`` holds at least ``tokens`` tokens."""
        while len(self.got[req_id]) < tokens:
            self()

    def __call__(self) -> None:
        before = {k: len(v) for k, v in self.got.items()}
        for o in self.engine.step():
            self.got[o.request_id] = list(o.outputs[0].token_ids)
        self.grown.append({k: len(v) - before[k] for k, v in self.got.items()})

    def finish(self) -> None:
        while self.engine.has_unfinished_requests():
            self()

    def close(self) -> None:
        self.engine.engine_core.shutdown()
        del self.llm, self.engine
        gc.collect()


def _cycles_run(worker):
    return worker.model_runner.spd_device.cycles_run


@pytest.mark.parametrize("num_stages", [2, 4])
def test_no_cycle_is_launched_after_the_last_commit(tiny_qwen3, recorded, num_stages):
    """At alpha 1 a request of T tokens commits T - 1 after prefill, the first once its
    prefill token has been through the n stages: T + n - 2 cycles over several steps
    (cycles_per_step 9, so the last step is a short one), none launched after its last commit."""
    from vllm import LLM, SamplingParams

    path, reference = recorded
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": num_stages, "drafter": "oracle", "oracle_tokens": path,
            "oracle_alpha": 1.0, "cycles_per_step": 9}
    llm = LLM(model=tiny_qwen3, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec)
    try:
        out = llm.generate(PROMPTS[:1], sp, use_tqdm=False)
        assert list(out[0].outputs[0].token_ids) == reference[0]
        assert llm.collective_rpc(_cycles_run) == [MAX_TOKENS + num_stages - 2]
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _per_launch(worker):
    return worker.model_runner.spd_device.per_launch


def test_several_cycles_per_launch_match_plain_and_host_cycle(tiny_qwen3, recorded, monkeypatch):
    """Five cycles per launch (one graph of five on a GPU), the rest of a step's cycles one
    at a time: output and every draft verdict equal plain vLLM's and the host cycle's."""
    from vllm import SamplingParams

    path, reference = recorded
    monkeypatch.setenv("VLLM_SPD_CYCLES_PER_GRAPH", "5")
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": 3, "drafter": "oracle", "oracle_tokens": path, "oracle_alpha": 0.7,
            "cycles_per_step": 10}
    both_cycles(tiny_qwen3, spec, sp, reference, monkeypatch)
    monkeypatch.setenv("VLLM_SPD_DEVICE_CYCLE", "1")
    from vllm import LLM

    llm = LLM(model=tiny_qwen3, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec)
    try:
        llm.generate(PROMPTS[:1], sp, use_tqdm=False)
        assert llm.collective_rpc(_per_launch) == [5]
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def test_cycles_per_graph_setting_rejects_nonsense(monkeypatch):
    from vllm_spd import envs

    for bad in ("0", "-2", "four"):
        monkeypatch.setenv(envs.CYCLES_PER_GRAPH_VAR, bad)
        with pytest.raises(ValueError, match="VLLM_SPD_CYCLES_PER_GRAPH"):
            envs.cycles_per_graph()
    monkeypatch.setenv(envs.CYCLES_PER_GRAPH_VAR, "4")
    assert envs.cycles_per_graph() == 4


def test_many_stop_ids_take_the_host_cycle(tiny_qwen3, recorded):
    """More stop ids than the device gate holds: that step takes the host cycle, exactly."""
    from vllm import SamplingParams

    from vllm_spd.engine.device_cycle import STOP_SLOTS

    path, reference = recorded
    many = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True,
                           stop_token_ids=list(range(4000, 4001 + STOP_SLOTS)))]
    spec = {"method": "spd", "num_stages": 2, "drafter": "oracle", "oracle_tokens": path, "oracle_alpha": 0.7}
    outs, _, steps = run(tiny_qwen3, spec, many, PROMPTS[:1])
    stops = set(many[0].stop_token_ids)
    cut = next((i + 1 for i, t in enumerate(reference[0]) if t in stops), len(reference[0]))
    assert list(outs[0].outputs[0].token_ids) == reference[0][:cut]
    assert steps == 0


@pytest.mark.parametrize("placement,per_launch", [("single_worker", "1"), ("single_worker", "3"),
                                                   ("pipeline", "1")])
def test_rows_short_of_token_budget_pause_and_resume(tiny_qwen3, recorded, placement, per_launch, monkeypatch):
    """A token budget too small for every request's cycles_per_step: the scheduler gives
    one decoding request 4 tokens where the others get 8, so with every draft right
    (one commit per cycle) its row sits out the last cycles of a step while the others
    go on, and picks up next step where it stopped. Its in-flight hidden states must
    survive those cycles, in one worker (one and three cycles per launch) and on 4
    pipeline ranks."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")   # one thread per rank, placed by the OS
    monkeypatch.setenv("VLLM_SPD_CYCLES_PER_GRAPH", per_launch)
    pause_and_resume(tiny_qwen3, recorded, placement)


def pause_and_resume(model, recorded, placement: str) -> None:
    """Greedy output under a token budget that pauses a row mid-step equals plain's."""
    from vllm import LLM, SamplingParams

    path, reference = recorded
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": 4, "drafter": "oracle", "oracle_tokens": path, "oracle_alpha": 1.0,
            "cycles_per_step": 8, "stage_placement": placement, "verdict_lag": 0}
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              speculative_config=spec, max_num_batched_tokens=36, enable_chunked_prefill=True,
              disable_log_stats=False)
    out = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
    steps = llm.collective_rpc(_device_steps)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    assert steps[0] and all(s == steps[0] for s in steps), steps   # every rank ran every step
    assert_identical(reference, out)


def test_rows_short_of_token_budget_survive_an_in_place_norm(tiny_qwen3, recorded, monkeypatch):
    """The same pause and resume in one worker, with the decoder layers' residual RMSNorm
    working in place on its inputs, as vLLM's CUDA kernel does (on CPU it returns new
    tensors): a stage must not hand its carried input buffers to the layers, or the
    hidden state of a row that sits the cycle out is overwritten."""
    from vllm.model_executor.layers.layernorm import RMSNorm

    native = RMSNorm.forward_native

    def in_place(self, x, residual=None):
        out = native(self, x, residual)
        if residual is None:
            return out
        x.copy_(out[0])
        residual.copy_(out[1])
        return x, residual

    monkeypatch.setattr(RMSNorm, "forward_native", in_place)
    pause_and_resume(tiny_qwen3, recorded, "single_worker")


def test_compiled_stage_slices_match_plain(tiny_qwen3, recorded, monkeypatch):
    """The stage slices compiled, as they are where the cycle's graphs are captured, here
    through a backend that keeps dynamo's graphs and runs them as traced: greedy output
    equals plain vLLM's; each stage slice is one graph that calls vLLM's attention op once
    per layer, with its norms, rotary embedding and activation as native torch ops (which
    Inductor fuses), not vLLM's kernels or IR op wrappers."""
    import torch
    from vllm import SamplingParams

    graphs = keep_graphs_while(monkeypatch)
    path, reference = recorded
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    spec = {"method": "spd", "num_stages": 3, "drafter": "oracle", "oracle_tokens": path, "oracle_alpha": 0.7}
    outs, _, steps = run(tiny_qwen3, spec, sp)
    assert steps
    assert_identical(reference, [list(o.outputs[0].token_ids) for o in outs])
    # tiny Qwen3's 8 layers over 3 stages: 3, 3, 2 (each stage also compiled again at batch 1)
    counts = [attention_calls(g) for g in graphs]
    assert set(counts) == {2, 3} and len(counts) >= 3 and counts.count(3) == 2 * counts.count(2), counts
    torch._dynamo.reset()


def test_compiled_draft_module_matches_plain(predictable, tmp_path, monkeypatch):
    """The draft module's layers compiled too, drafting inside the cycle: exact output,
    drafts mostly right, and one more graph, the draft module's, with its one layer."""
    import torch
    from vllm import SamplingParams

    from spd_models import mirror_head

    graphs = keep_graphs_while(monkeypatch)
    target, reference = predictable
    head = mirror_head(target, 2, str(tmp_path / "head"), context=0.05)
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    outs, counters, steps = run(target, {"method": "spd", "num_stages": 2, "model": head}, sp)
    assert steps
    assert_identical(reference, [list(o.outputs[0].token_ids) for o in outs])
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0.3 * counters["vllm:spec_decode_num_draft_tokens"]
    # 2 stages of 3 or more layers each, and the draft module's one layer
    counts = [attention_calls(g) for g in graphs]
    assert 1 in counts and len(set(counts) - {1}) in (1, 2) and min(set(counts) - {1}) >= 3, counts
    torch._dynamo.reset()


def attention_calls(gm) -> int:
    """How many attention layers a kept graph runs; and none of its norms, rotary
    embedding or activation left as vLLM's kernels or IR op wrappers (matrix products may
    stay vLLM's), so that Inductor fuses them."""
    targets = [str(node.target) for node in gm.graph.nodes if node.op == "call_function"]
    unfusable = ("vllm_ir", "rms_norm", "silu_and_mul", "rotary_embedding")
    assert not [t for t in targets if any(u in t for u in unfusable)], targets
    return sum("unified_attention_with_output" in t for t in targets)


def keep_graphs_while(monkeypatch) -> list:
    """Compile the device cycle's layers through a backend that keeps dynamo's graphs
    (returned, filled as they are compiled) and runs them as traced."""
    from torch._dynamo.backends.registry import list_backends, register_backend

    if "spd_keep_graphs" not in list_backends(exclude_tags=()):
        register_backend(compiler_fn=_keep_graph, name="spd_keep_graphs")
    KEPT_GRAPHS.clear()
    monkeypatch.setenv("VLLM_SPD_STAGE_COMPILE", "spd_keep_graphs")
    return KEPT_GRAPHS


#: the graphs the "spd_keep_graphs" backend compiled since ``keep_graphs_while``
KEPT_GRAPHS: list = []


def _keep_graph(gm, example_inputs):
    KEPT_GRAPHS.append(gm)
    return gm.forward


def test_timing_summary_counts_cycles_per_launch(monkeypatch):
    """``set_timing``'s summary from recorded launches (CUDA events stood in for): two
    steps, the first of two launches of four cycles and one single cycle, the second of
    one launch of four; per-cycle GPU and launch times divide by each launch's cycles,
    idle times split between and within steps, and the load's time and phases are medians,
    for whole-batch loads and steps over resident rows apart."""
    import torch

    from vllm_spd.engine.device_cycle import LOAD_PHASES, DeviceCycle

    class Event:
        def __init__(self, t):
            self.t = t

        def elapsed_time(self, other):   # ms, as CUDA events report
            return other.t - self.t

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    cycle = object.__new__(DeviceCycle)
    cycle.per_launch, cycle.compiled, cycle.timing = 4, None, True
    # launches: [0, 8) 4 cycles, [8.002, 10.002) 1 cycle, next step [12, 20) 4 cycles
    cycle._events = [(Event(0.0), Event(8.0)), (Event(8.002), Event(10.002)), (Event(12.0), Event(20.0))]
    cycle.samples = {"launch_us": [40.0, 10.0, 44.0], "launch_cycles": [4, 1, 4], "step_host_us": [900.0, 700.0],
                     "step_load_us": [600.0, 100.0], "step_launches": [2, 1], "step_resident": [0, 1],
                     "load_phases_us": [[1, 2, 3, 4, 5, 6], [3, 1, 0, 0, 2, 1]]}
    out = cycle.set_timing(False)
    assert out["cycles"] == 9 and out["steps"] == 2 and out["cycles_per_graph"] == 4
    assert out["device_ms_per_cycle"] == 2.0 and out["launch_us_per_cycle"] == 10.0
    assert out["host_us_per_cycle"] == round((94.0 + 1600.0) / 9, 2)
    assert out["idle_us_between_cycles"] == 2.0 and out["idle_us_between_steps"] == 1998.0
    assert out["step_load_us"] == 350.0 and out["resident_steps"] == 1
    assert out["step_load_full_us"] == 600.0 and out["step_load_resident_us"] == 100.0
    assert out["step_load_phases_full_us"] == dict(zip(LOAD_PHASES, [1, 2, 3, 4, 5, 6]))
    assert out["step_load_phases_resident_us"] == dict(zip(LOAD_PHASES, [3, 1, 0, 0, 2, 1]))
    assert cycle.timing is False and cycle.samples["launch_us"] == []


# ---- input arriving mid-step (engine/arrivals.py) ----------------------------------

def _cut_steps(worker):
    from vllm_spd.engine import arrivals

    device = getattr(worker.model_runner, "spd_device", None)
    return arrivals.watching(), None if device is None else device.steps_cut


def test_waiting_input_ends_the_step_after_its_first_cycle(tiny_qwen3, recorded, monkeypatch):
    """A decodes alone, every draft right, eight cycles a step. While input waits, a
    step stops launching after its first cycle (one token); once none waits, steps are
    whole again. Output equals plain vLLM's."""
    from vllm_spd.engine import arrivals

    waiting = {"now": False}
    monkeypatch.setattr(arrivals, "watching", lambda: True)
    monkeypatch.setattr(arrivals, "pending", lambda: waiting["now"])
    path, reference = recorded
    steps = ByHand(tiny_qwen3, path, cycles_per_step=8)
    try:
        steps.add("A", PROMPTS[0])
        steps.until("A", 20)
        waiting["now"] = True
        steps()
        steps()
        waiting["now"] = False
        steps()
        assert [g["A"] for g in steps.grown[-3:]] == [1, 1, 8]
        steps.finish()
        assert steps.llm.collective_rpc(_cut_steps) == [(True, 2)]
    finally:
        steps.close()
    assert_identical(reference[:1], [steps.got["A"]])


def test_plugin_hands_the_engine_core_input_queue_over(monkeypatch):
    """The engine core process's busy loop, as the plugin wraps it, hands its input queue
    to ``arrivals`` before it runs. (End to end this needs the worker inside the engine
    core's process, vLLM's one-process executor: vllm-cpu always uses the
    multiprocessing executor, so ``tests/test_gpu_runner.py`` checks it on a GPU.)"""
    import queue
    from types import SimpleNamespace

    from vllm.v1.engine.core import EngineCoreProc

    from vllm_spd import plugin
    from vllm_spd.engine import arrivals

    plugin.register()
    assert getattr(EngineCoreProc.run_busy_loop, "_spd_wrapped", False)
    monkeypatch.setattr(arrivals, "_input", None)
    core = SimpleNamespace(input_queue=queue.Queue())
    seen = []
    assert plugin._watch_input(lambda self: seen.append(arrivals.watching()) or "looped", core) == "looped"
    assert seen == [True]
    core.input_queue.put("a request")
    assert arrivals.pending()


@pytest.mark.parametrize("items", [0, 1])
def test_pending_reads_the_watched_queue_without_taking_from_it(items, monkeypatch):
    import queue

    from vllm_spd.engine import arrivals

    monkeypatch.setattr(arrivals, "_input", None)
    assert not arrivals.watching() and not arrivals.pending()
    q = queue.Queue()
    for i in range(items):
        q.put(i)
    arrivals.watch(q)
    assert arrivals.watching() and arrivals.pending() == bool(items)
    assert q.qsize() == items
