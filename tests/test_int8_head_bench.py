"""benchmarks/int8_head.py on a head trained for a few steps on the trainer tests' tiny
target: the float head's accuracy is the trainer's own held-out accuracy, and its int8
copy drafts nearly the same tokens from a quarter of the bytes."""

import json
import os
import sys

import pytest

from test_train import _train, _write_data, target_dir  # noqa: F401 (a fixture)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import int8_head  # noqa: E402


def test_int8_head_bench(target_dir, tmp_path):  # noqa: F811
    data = _write_data(tmp_path / "train.jsonl", 60, seed=0)
    head = str(tmp_path / "head")
    common = ["--data", data, "--eval-fraction", "0.2", "--max-length", "64", "--batch-size", "4"]
    _train(["--target", target_dir, "--num-stages", "2", "--draft-layers", "1", "--draft-vocab-size", "64",
                      "--steps", "8", "--lr", "3e-3", "--eval-every", "8", "--seed", "3", "--out", head] + common)
    out = tmp_path / "result.json"
    r = int8_head.main(["--target", target_dir, "--head", head, "--int8-out", str(tmp_path / "int8"),
                        "--out", str(out)] + common)
    assert json.loads(out.read_text())["argmax_agreement"] == r["argmax_agreement"]
    assert r["positions"] > 40
    from vllm_spd import checkpoint

    trained = checkpoint.read_config(head).provenance["final_eval_accuracy"]
    assert r["accuracy_float"] == pytest.approx(trained, abs=1e-4)
    assert r["argmax_agreement"] > 0.9 and abs(r["accuracy_int8"] - r["accuracy_float"]) < 0.05
    assert 0.2 < r["bytes_int8"] / r["bytes_float"] < 0.35
