"""benchmarks/trace_cycles.py on a synthetic trace: graph replays are found through the
correlation id their kernels share with the cudaGraphLaunch, and the medians follow."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))


def _trace(starts_us, kernel_us, gap_us, launch_us):
    events = []
    for i, start in enumerate(starts_us):
        corr = 100 + i
        events.append(dict(ph="X", cat="cuda_runtime", name="cudaGraphLaunch", ts=start - 50.0, dur=launch_us,
                           args=dict(correlation=corr)))
        t = start
        for d in kernel_us:
            events.append(dict(ph="X", cat="kernel", name="k", ts=t, dur=d, args=dict(correlation=corr, stream=7)))
            t += d + gap_us
        # a kernel of no graph (e.g. metadata) must not count
        events.append(dict(ph="X", cat="kernel", name="meta", ts=t + 5, dur=3.0, args=dict(correlation=9999)))
    return dict(traceEvents=events)


def test_cycle_timing_from_graph_replays():
    from trace_cycles import cycle_timing

    # three replays of kernels 100 + 200 us with a 10 us gap between them: span 310, sum 300
    t = cycle_timing(_trace([0.0, 1000.0, 2100.0], [100.0, 200.0], 10.0, 40.0))
    assert t["cycles"] == 3
    assert t["graph_span_ms"] == 0.31 and t["graph_kernels_ms"] == 0.3
    assert t["period_ms"] == 1.05            # median of 1000 and 1100 us
    assert t["idle_ms"] == 0.74              # median of 690 and 790 us
    assert t["launch_host_ms"] == 0.04
    assert t["host_busy_ms"] is None          # no phases annotated


def test_host_busy_leaves_out_waits():
    from trace_cycles import cycle_timing

    trace = _trace([0.0, 1000.0], [100.0], 0.0, 40.0)
    phase = dict(ph="X", cat="user_annotation")
    trace["traceEvents"] += [dict(phase, name="spd.stage", ts=0.0, dur=600.0),
                             dict(phase, name="spd.control", ts=600.0, dur=300.0),   # waiting for the broadcast
                             dict(phase, name="spd.commit", ts=900.0, dur=100.0),
                             dict(phase, name="spd.stage", ts=1000.0, dur=1000.0)]
    assert cycle_timing(trace)["host_busy_ms"] == 0.85        # (2000 - 300) / 2 cycles
    trace["traceEvents"] += [dict(phase, name="spd.verify", ts=1200.0, dur=500.0),   # the controller:
                             dict(ph="X", cat="cuda_runtime", name="cudaEventSynchronize", ts=1300.0, dur=400.0)]
    assert cycle_timing(trace)["host_busy_ms"] == 0.8         # its control phase is work, the sync a wait


def test_too_few_replays_is_an_error():
    from trace_cycles import cycle_timing

    with pytest.raises(SystemExit, match="fewer than two"):
        cycle_timing(_trace([0.0], [100.0], 0.0, 10.0))
