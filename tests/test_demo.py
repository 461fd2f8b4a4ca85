"""``make demo``'s line of measured GPU decode speed beside the modelled one."""

import json

from vllm_spd.demo import measured_line


def _run(tmp_path, rows):
    path = tmp_path / "decode_speed_n4_h200.json"
    path.write_text(json.dumps({"hardware": "4x GPU", "rows": rows}))
    return str(path)


def test_measured_line_takes_the_priced_row_nearest_alpha(tmp_path):
    rows = [{"batch": 1, "system": "tp1", "out_tok_s": 200.0}, {"batch": 1, "system": "tpn", "out_tok_s": 400.0},
            {"batch": 4, "system": "tp1", "out_tok_s": 700.0},
            {"batch": 1, "system": "spd", "drafter": "oracle", "measured_alpha": 0.7, "out_tok_s": 500.0},
            {"batch": 1, "system": "spd", "drafter": "oracle+pdm_priced", "measured_alpha": 0.6, "out_tok_s": 150.0},
            {"batch": 1, "system": "spd", "drafter": "oracle+pdm_priced", "measured_alpha": 0.8, "out_tok_s": 300.0}]
    line = measured_line(4, 0.72, _run(tmp_path, rows))
    assert "alpha 0.80" in line and "300 tok/s" in line and "TP=1 200 (1.50x)" in line and "TP=4 400 (0.75x)" in line
    assert "alpha 0.60" in measured_line(4, 0.65, _run(tmp_path, rows))


def test_measured_line_is_none_without_a_priced_run(tmp_path):
    assert measured_line(4, 0.7, str(tmp_path / "absent.json")) is None
    rows = [{"batch": 1, "system": "tp1", "out_tok_s": 200.0}, {"batch": 1, "system": "tpn", "out_tok_s": 400.0},
            {"batch": 1, "system": "spd", "drafter": "oracle", "measured_alpha": 0.7, "out_tok_s": 500.0}]
    assert measured_line(4, 0.7, _run(tmp_path, rows)) is None
