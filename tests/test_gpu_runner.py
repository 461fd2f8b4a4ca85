"""The SPD runner on a CUDA GPU (vLLM's GPU V1 runner, FlashAttention metadata):
greedy output identical to plain decoding. Skipped where there is no GPU."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("num_stages", [2, 4])
def test_gpu_spd_matches_plain(tiny_qwen3, num_stages, tmp_path):
    from spd_models import mirror_head, predictable_target
    from test_e2e_greedy import assert_identical, generate
    from vllm_spd.head import init_head

    ref, _ = generate(tiny_qwen3)
    head = str(tmp_path / "head")
    init_head(tiny_qwen3, num_stages, head, num_draft_layers=2)
    out, _ = generate(tiny_qwen3, {"method": "spd", "num_stages": num_stages, "model": head})
    assert_identical(ref, out)
    target = predictable_target(tiny_qwen3, str(tmp_path / "pt"))
    ref, _ = generate(target)
    out, counters = generate(target, {"method": "spd", "num_stages": num_stages,
                                      "model": mirror_head(target, num_stages, str(tmp_path / "mh"))})
    assert_identical(ref, out)
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0.6 * counters["vllm:spec_decode_num_draft_tokens"]


def _device_cycle_graphs(worker):
    device = getattr(worker.model_runner, "spd_device", None)
    if device is None:
        return None
    return {"graphs": len(device.graphs), "steps": device.steps, "per_launch": device.per_launch,
            "stage_compile": None if device.compiled is None else device.compiled.backend}


@pytest.mark.parametrize("num_stages,per_launch", [(2, 1), (4, 1), (4, 5)])
def test_gpu_device_cycle_graphs_match_plain(tiny_qwen3, num_stages, per_launch, monkeypatch):
    """The device cycle as it runs by default on a GPU: captured in CUDA graphs (of one
    cycle, or of five with the rest of a step's cycles one at a time), each stage's
    layers compiled by Inductor, against plain vLLM compiled and captured too (float32,
    greedy): token-identical, and the device cycle served the decode steps."""
    import gc

    from vllm import LLM, SamplingParams

    from test_e2e_greedy import PROMPTS, assert_identical

    monkeypatch.setenv("VLLM_SPD_CYCLES_PER_GRAPH", str(per_launch))
    sp = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    outs = {}
    for spec in (None, {"method": "spd", "num_stages": num_stages, "drafter": "ngram"}):
        llm = LLM(model=tiny_qwen3, dtype="float32", max_model_len=512, seed=0, speculative_config=spec,
                  gpu_memory_utilization=0.3)
        outs[spec is None] = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        cycle = llm.collective_rpc(_device_cycle_graphs)[0] if spec else None
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    assert_identical(outs[True], outs[False])
    assert cycle["graphs"] > 0 and cycle["steps"] > 0 and cycle["stage_compile"] == "inductor", cycle
    assert cycle["per_launch"] == per_launch, cycle


def _arrivals(worker):
    from vllm_spd.engine import arrivals

    device = getattr(worker.model_runner, "spd_device", None)
    return arrivals.watching(), None if device is None else device.steps


def test_gpu_engine_core_process_watches_its_input(tiny_qwen3, monkeypatch):
    """vLLM's default on one GPU: the engine core in its own process and the worker in
    it. The device cycle watches the engine core's input queue (a step ends early when a
    request arrives), and greedy output of requests that reach the engine one by one
    equals plain vLLM's."""
    import gc

    from vllm import LLM, SamplingParams

    from test_e2e_greedy import PROMPTS, assert_identical

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")   # collective_rpc of a test function
    sp = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    outs, probe = {}, None
    for spec in (None, {"method": "spd", "num_stages": 2, "drafter": "ngram", "cycles_per_step": 16}):
        llm = LLM(model=tiny_qwen3, dtype="float32", max_model_len=512, seed=0, speculative_config=spec,
                  gpu_memory_utilization=0.3)
        outs[spec is None] = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        if spec:
            probe = llm.collective_rpc(_arrivals)[0]
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    assert_identical(outs[True], outs[False])
    assert probe[0] and probe[1] > 0, probe
