"""The draft head shipped for SmolLM2-135M-Instruct at num_stages 4: its size, that a fresh
machine finds it, and that it still drafts (benchmarks/acceptance.py, 8 MT-Bench prompts x
64 tokens on CPU, alpha above a floor well below its measured value)."""

import glob
import json
import os
import sys

from vllm_spd import checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import acceptance  # noqa: E402

SHIPPED = os.path.join(checkpoint.SHIPPED_HEADS_DIR, "SmolLM2-135M-Instruct", "s4")
MT_BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "data", "mt_bench_questions.jsonl")
# Measured 0.544 (274 of 504 drafts) on a 2-core CPU with these arguments, 0.610 on an
# H100 over 40 prompts x 128 tokens (docs/training.md). A head that no longer drafts
# (wrong vocabulary map, broken int8 load, wrong anchors) falls far below.
FLOOR = 0.35


def test_shipped_heads_fit_in_32_mb():
    files = glob.glob(os.path.join(checkpoint.SHIPPED_HEADS_DIR, "*", "*", "*.safetensors"))
    assert os.path.join(SHIPPED, checkpoint.WEIGHTS_FILE) in files
    assert sum(os.path.getsize(f) for f in files) <= 32e6
    cfg = checkpoint.read_config(SHIPPED)
    assert (cfg.num_stages, cfg.weight_format, cfg.trained) == (4, "int8-rowwise", True)


def test_shipped_head_drafts_above_its_floor(smollm2, tmp_path, monkeypatch):
    # no user head in the way (the embedded target's own cache keeps its path)
    monkeypatch.setattr(checkpoint, "cache_head_dir", lambda target, n: str(tmp_path / "no_head"))
    assert checkpoint.find_default_head(smollm2, 4) == SHIPPED
    out = tmp_path / "acceptance.json"
    acceptance.main(["--target", smollm2, "--num-stages", "4", "--prompts", MT_BENCH, "--limit", "8",
                     "--max-tokens", "64", "--temperature", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["drafter"] == "head" and result["head"]["path"] == os.path.abspath(SHIPPED)
    (row,) = result["results"]
    assert row["prompts"] == 8 and row["drafts"] > 300
    assert row["alpha"] > FLOOR, row
