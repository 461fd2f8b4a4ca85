"""One stage per GPU (NCCL between ranks), decode stages through vLLM's compiled model
and its full decode CUDA graphs (padded batches included: four prompts while the
pipelines fill): greedy output identical to plain vLLM, also compiled; and the device
cycle across ranks, each rank's part captured in CUDA graphs.
Skipped without at least two CUDA GPUs (CI has none)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs two CUDA GPUs")

PROMPTS = ["def fibonacci(n):", "The capital of France is", "import numpy as np\n", "Once upon a time"]


@pytest.fixture
def mirrored(tiny_qwen3, tmp_path, monkeypatch):
    """``make(num_stages)``: the predictable target and its mirror head for ``num_stages``."""
    from spd_models import mirror_head, predictable_target

    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")

    def make(num_stages: int):
        if torch.cuda.device_count() < num_stages:
            pytest.skip(f"needs {num_stages} GPUs")
        target = predictable_target(tiny_qwen3, str(tmp_path / "pt"))
        return target, mirror_head(target, num_stages, str(tmp_path / f"head{num_stages}"))
    return make


def generate(target, spec, probe=None):
    """Greedy output of ``PROMPTS``, vLLM's spec-decode counters and, with ``probe``,
    what it returns on every rank."""
    import gc

    from vllm import LLM, SamplingParams

    llm = LLM(model=target, dtype="float32", max_model_len=512, seed=0, disable_log_stats=False,
              gpu_memory_utilization=0.3, speculative_config=spec)
    sp = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    outs = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
    counters = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    ranks = llm.collective_rpc(probe) if probe is not None else None
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return outs, counters, ranks


@pytest.mark.parametrize("num_stages", [2, 4])
def test_gpu_pipeline_compiled_matches_plain(mirrored, num_stages):
    target, head = mirrored(num_stages)
    plain, _, _ = generate(target, None)
    spd, counters, _ = generate(target, {"method": "spd", "num_stages": num_stages, "model": head,
                                         "stage_placement": "pipeline"})
    assert spd == plain
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0.6 * counters["vllm:spec_decode_num_draft_tokens"]


def _rank_cycle(worker):
    device = getattr(worker.model_runner, "spd_device", None)
    if device is None:
        return None
    return {"graphs": len(device.graphs), "steps": device.steps, "cycles": device.cycles_run}


@pytest.mark.parametrize("num_stages", [2, 4])
def test_gpu_pipeline_device_cycle_graphs_match_plain(mirrored, num_stages):
    """``verdict_lag`` 0 across ranks on GPUs: every rank replays its part of the cycle
    as CUDA graphs with the hop between ranks (NCCL) launched between them. Greedy
    output identical to plain vLLM with the draft module and with prompt lookup, and
    every rank ran the same captured cycles."""
    target, head = mirrored(num_stages)
    plain, _, _ = generate(target, None)
    spd = {"method": "spd", "num_stages": num_stages, "stage_placement": "pipeline", "verdict_lag": 0}
    for drafting in ({"model": head}, {"drafter": "ngram"}):
        out, _, ranks = generate(target, {**spd, **drafting}, probe=_rank_cycle)
        assert out == plain, drafting
        assert len(ranks) == num_stages and all(r == ranks[0] for r in ranks), ranks
        assert ranks[0]["graphs"] > 0 and ranks[0]["steps"] > 0, ranks
