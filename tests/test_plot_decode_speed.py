"""benchmarks/plot_decode_speed.py reads the cited decode-speed results (skipped without matplotlib)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("plot_decode_speed", ROOT / "benchmarks" / "plot_decode_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_panels_from_the_cited_results():
    panels = _module().load(_module().DEFAULT_INPUTS, batch=1)
    n2, n4 = panels[("2x NVIDIA H200", 2)], panels[("4x NVIDIA H200", 4)]
    assert (1.0, 362.7) in n2["spd"]["SPD n=2, verdict_lag 1"]
    assert n2["base"] == {"tp1": 195.5, "tpn": 266.5, "ppn": 191.0}
    assert (1.0, 495.0) in n4["spd"]["SPD n=4, verdict_lag 1"]
    assert n4["base"]["tpn"] == 345.2


def test_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plot.png"
    _module().main(["--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_gpu_panel_holds_the_device_cycle_rows_and_plain_tp1():
    panels = _module().load(_module().DEFAULT_INPUTS, batch=1)
    (key,) = [k for k in panels if k[1] == 1]
    one = panels[key]
    assert set(one["base"]) == {"tp1"}
    names = list(one["spd"])     # one line per num_stages run in one worker
    assert names and all(name.startswith("SPD n=") and "one GPU" in name for name in names)
    assert max(len(points) for points in one["spd"].values()) >= 2
