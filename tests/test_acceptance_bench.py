"""benchmarks/acceptance.py on the tiny model: 3 prompts x 8 tokens, head and ngram."""

import json
import math
import os
import sys

import pytest

from vllm_spd.head import init_head

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import acceptance  # noqa: E402

PROMPTS = ["Write a function that adds two numbers.", "What is a stack?", "Name three colours."]


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"turns": [p, "follow-up, unused"]}) + "\n" for p in PROMPTS))
    return str(path)


def _check(result, n, temperatures):
    assert result["num_stages"] == n and result["hardware"]["cpu"]
    assert [r["temperature"] for r in result["results"]] == temperatures
    for r in result["results"]:
        assert r["file"] == "prompts.jsonl" and r["prompts"] == 3 and 3 <= r["output_tokens"] <= 3 * 8
        # Each verification commits one token; the first token comes from prefill.
        assert r["drafts"] == r["output_tokens"] - 3, r
        assert 0 <= r["accepted"] <= r["drafts"] and r["alpha"] == pytest.approx(r["accepted"] / r["drafts"])
        # Worker-counted cycles vs the model (which over-counts a final rejection by n-1).
        assert r["cycles_source"] == "worker"
        assert 0 <= r["model_cycles"] - r["cycles"] <= (n - 1) * 3, r
        assert r["tokens_per_cycle"] == pytest.approx(r["output_tokens"] / r["cycles"])
        assert r["ideal_speedup"] == pytest.approx(n / (1 + (n - 1) * (1 - r["alpha"])))
        assert r["wall_s"] > 0 and not math.isnan(r["n_x_tokens_per_cycle"])


def test_acceptance_bench_head_and_ngram(tiny_qwen3, prompts_file, tmp_path):
    head = str(tmp_path / "head")
    init_head(tiny_qwen3, 2, head)
    out = tmp_path / "head.json"
    acceptance.main(["--target", tiny_qwen3, "--head", head, "--num-stages", "2", "--prompts", prompts_file,
                     "--max-tokens", "8", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["drafter"] == "head" and result["head"]["path"] == os.path.abspath(head)
    _check(result, 2, [0.0, 1.0])

    out = tmp_path / "ngram.json"
    acceptance.main(["--target", tiny_qwen3, "--drafter", "ngram", "--num-stages", "3", "--prompts", prompts_file,
                     "--max-tokens", "8", "--temperature", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["drafter"] == "ngram" and result["head"] is None
    _check(result, 3, [0.0])


@pytest.mark.parametrize("flag,value", [("--hybrid-min-match", "2"), ("--hybrid-max-temperature", "1.0")])
def test_hybrid_flags_need_the_hybrid_drafter(tmp_path, prompts_file, capsys, flag, value):
    with pytest.raises(SystemExit):
        acceptance.main(["--target", "unused", "--num-stages", "2", "--prompts", prompts_file,
                         flag, value, "--out", str(tmp_path / "x.json")])
    assert f"{flag} needs --drafter hybrid" in capsys.readouterr().err
