"""Per-cycle device timing of one rank from a profiled SPD decode step.

    python benchmarks/trace_cycles.py spd_trace_rank0.json.gz [spd_trace_rank1.json.gz ...]

Reads the Chrome traces that ``VLLM_SPD_PROFILE_DIR`` makes (``vllm_spd/engine/step_profiler.py``,
one decode step per rank). A rank's stage forward replays one CUDA graph per cycle;
the kernels of a replay carry the correlation id of its ``cudaGraphLaunch``. Per rank
it prints the medians over the step's cycles of:

- ``graph span``: first kernel start to last kernel end of the stage's graph;
- ``graph kernels``: the sum of those kernels' durations (the stage's device time);
- ``period``: from one replay's first kernel to the next one's (the cycle, as the
  device sees it);
- ``idle``: period minus graph span (when this rank's stage is not running: the
  controller's LM head and verification fall here, and any wait);
- ``launch host``: the host time of ``cudaGraphLaunch`` itself;
- ``host busy``: the host's time per cycle minus its waits (device synchronisations,
  and on a rank that does not verify, its wait for the controller's broadcast, the
  ``spd.control`` phase); the host work a cycle needs on this rank.

The profiler slows the host, so these are the profiled step's figures; tokens/s come
from the untimed runs of ``decode_speed.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from collections import defaultdict


def cycle_timing(trace: dict) -> dict:
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    launches = sorted((e for e in events if e.get("name") == "cudaGraphLaunch"), key=lambda e: e["ts"])
    kernels = defaultdict(list)
    for e in events:
        if e.get("cat") == "kernel":
            kernels[e["args"].get("correlation")].append(e)
    replays = []
    for launch in launches:
        ks = kernels.get(launch["args"].get("correlation"), [])
        if ks:
            start = min(k["ts"] for k in ks)
            end = max(k["ts"] + k["dur"] for k in ks)
            replays.append((start, end, sum(k["dur"] for k in ks), launch["dur"]))
    if len(replays) < 2:
        raise SystemExit("fewer than two graph replays in this trace: nothing to time")
    periods = [b[0] - a[0] for a, b in zip(replays, replays[1:])]
    spans = [end - start for start, end, _, _ in replays]

    def med(xs):
        return round(statistics.median(xs) / 1000, 3)

    return dict(cycles=len(replays), graph_span_ms=med(spans), graph_kernels_ms=med([r[2] for r in replays]),
                period_ms=med(periods), idle_ms=med([p - s for p, s in zip(periods, spans)]),
                launch_host_ms=med([r[3] for r in replays]), host_busy_ms=host_busy_ms(events, len(replays)))


def host_busy_ms(events, cycles: int) -> float | None:
    """Mean host time per cycle outside waits, over the step's annotated phases."""
    phases = [e for e in events if e.get("cat") == "user_annotation" and str(e.get("name")).startswith("spd.")]
    if not phases:
        return None
    start = min(e["ts"] for e in phases)
    end = max(e["ts"] + e["dur"] for e in phases)
    waits = sum(e["dur"] for e in events if e.get("name") in ("cudaEventSynchronize", "cudaStreamSynchronize")
                and start <= e["ts"] <= end)
    if not any(e["name"] == "spd.verify" for e in phases):   # not the controller
        waits += sum(e["dur"] for e in phases if e["name"] == "spd.control")
    return round((end - start - waits) / cycles / 1000, 3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    a = ap.parse_args(argv)
    for path in a.traces:
        with gzip.open(path) if path.endswith(".gz") else open(path) as f:
            t = cycle_timing(json.load(f))
        print(f"{path}: " + " ".join(f"{k}={v}" for k, v in t.items()))


if __name__ == "__main__":
    main()
