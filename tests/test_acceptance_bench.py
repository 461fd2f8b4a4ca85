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


def _check_row(r, n, prompts, max_tokens=8):
    assert r["prompts"] == prompts and prompts <= r["output_tokens"] <= prompts * max_tokens
    # Each verification commits one token; the first token comes from prefill.
    assert r["drafts"] == r["output_tokens"] - prompts, r
    assert 0 <= r["accepted"] <= r["drafts"] and r["alpha"] == pytest.approx(r["accepted"] / r["drafts"])
    # Worker-counted cycles vs the model (which over-counts a final rejection by n-1).
    assert r["cycles_source"] == "worker"
    assert 0 <= r["model_cycles"] - r["cycles"] <= (n - 1) * prompts, r
    assert r["tokens_per_cycle"] == pytest.approx(r["output_tokens"] / r["cycles"])
    assert r["ideal_speedup"] == pytest.approx(n / (1 + (n - 1) * (1 - r["alpha"])))
    assert r["wall_s"] > 0 and not math.isnan(r["n_x_tokens_per_cycle"])


def _check(result, n, temperatures):
    assert result["num_stages"] == n and result["hardware"]["cpu"]
    assert [r["temperature"] for r in result["results"]] == temperatures
    for r in result["results"]:
        assert r["file"] == "prompts.jsonl"
        _check_row(r, n, 3)


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


def test_load_prompts_keeps_categories_and_spreads_the_limit(tmp_path):
    path = tmp_path / "p.jsonl"
    cats = ["writing", "writing", "math", "math", "code", "code"]
    path.write_text("".join(json.dumps({"category": c, "turns": [f"q{i}", "x"]}) + "\n" for i, c in enumerate(cats))
                    + json.dumps({"turns": ["no category"]}) + "\n")
    prompts = acceptance.load_prompts(str(path), None)
    assert prompts[0] == ("q0", "writing") and prompts[-1] == ("no category", "")
    # Evenly spaced: 3 of 7 records are 0, 2, 4 (one per category), not the first three.
    assert acceptance.load_prompts(str(path), 3) == [("q0", "writing"), ("q2", "math"), ("q4", "code")]
    assert acceptance.by_category(prompts) == {"writing": ["q0", "q1"], "math": ["q2", "q3"], "code": ["q4", "q5"],
                                               "": ["no category"]}


def test_combined_runs_give_the_rates_of_their_summed_counts():
    a = {"prompts": 2, "output_tokens": 20, "drafts": 18, "accepted": 9, "cycles": 40, "model_cycles": 42,
         "wall_s": 1.0, "cycles_source": "worker"}
    b = {"prompts": 1, "output_tokens": 9, "drafts": 8, "accepted": 8, "cycles": 11, "model_cycles": 11,
         "wall_s": 0.5, "cycles_source": "model"}
    row = acceptance.summarize(acceptance.combine([a, b]), 0.0, 2)
    assert (row["prompts"], row["drafts"], row["accepted"], row["cycles"]) == (3, 26, 17, 51)
    assert row["alpha"] == pytest.approx(17 / 26) and row["tokens_per_cycle"] == pytest.approx(29 / 51)
    assert row["ideal_speedup"] == pytest.approx(2 / (1 + (1 - 17 / 26))) and row["cycles_source"] == "model"
    assert row["wall_s"] == 1.5 and row["output_tok_per_s"] == pytest.approx(29 / 1.5, abs=0.1)


def test_acceptance_bench_by_category(tiny_qwen3, tmp_path):
    path = tmp_path / "cats.jsonl"
    records = [("a", PROMPTS[0]), ("b", PROMPTS[1]), ("a", PROMPTS[2])]
    path.write_text("".join(json.dumps({"category": c, "turns": [p]}) + "\n" for c, p in records))
    head = str(tmp_path / "head")
    init_head(tiny_qwen3, 2, head)
    out = tmp_path / "cats_result.json"
    acceptance.main(["--target", tiny_qwen3, "--head", head, "--num-stages", "2", "--prompts", str(path),
                     "--max-tokens", "8", "--temperature", "0", "--by-category", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["by_category"] is True
    (row,) = result["results"]
    _check_row(row, 2, 3)
    cats = row["categories"]
    assert list(cats) == ["a", "b"] and cats["a"]["prompts"] == 2 and cats["b"]["prompts"] == 1
    for c, r in cats.items():
        _check_row(r, 2, r["prompts"])
    # The file's row is the categories' counts added up, its alpha their pooled rate.
    for k in ("output_tokens", "drafts", "accepted", "cycles", "model_cycles"):
        assert row[k] == sum(r[k] for r in cats.values()), k
    # Beside the JSON, a PNG of alpha per category (matplotlib is in the test set-up).
    pytest.importorskip("matplotlib")
    png = tmp_path / "cats_result.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
