"""benchmarks/request_features.py on the tiny model: every kind of request, both systems,
SPD's tokens equal to plain vLLM's."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import request_features  # noqa: E402


def test_request_features_bench(tiny_qwen3, tmp_path, capsys):
    out = tmp_path / "r.json"
    request_features.main(["--target", tiny_qwen3, "--spec", json.dumps({"method": "spd", "num_stages": 2}),
                           "--max-tokens", "8", "--runs", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["kinds"]) == {"plain", "penalties", "logprobs", "json_schema"}
    for name, row in result["kinds"].items():
        assert row["identical"], name
        assert row["plain_tok_s"] > 0 and row["spd_tok_s"] > 0
        assert 1 <= row["output_tokens"] <= 8
    assert result["kinds"]["plain"]["spd_vs_spd_plain_kind"] == 1.0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ROW ")]
    assert len(rows) == 8
