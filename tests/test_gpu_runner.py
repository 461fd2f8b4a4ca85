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
