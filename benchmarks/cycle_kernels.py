"""Time a device cycle's bookkeeping kernels: the stage plan and the commit step.

    python benchmarks/cycle_kernels.py --out cycle_kernels.json    # CUDA GPU
    python benchmarks/cycle_kernels.py --dry-run                    # any machine, no timings

Every cycle of the device cycle runs, besides its stages' layers, the stage plan (what
each stage runs and its attention rows: ``stage_plan.plan_stages``) and the commit step
(``CycleState.advance``). Each has a fused Triton kernel and a torch reference; this
times both as CUDA-graph replays (16 cycles per graph, steady state: full windows, every
row live, every draft accepted) for n = 2, 4, 8 stages and batch 1 and 4, and reports
the device time per cycle. Needs torch and triton only (no vLLM). ``--dry-run`` runs
each path once on CPU (the torch reference) and claims no timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CYCLES_PER_GRAPH = 16


def steady_state(n: int, batch: int, device):
    """Every row live with a full window (a token at each depth 0..n-1, one completing next)."""
    from vllm_spd.core.cycle_state import CycleState

    st = CycleState.allocate(batch, n, 64, stop_slots=16, mask_slots=16, device=device)
    st.wlen.fill_(n)
    st.head.fill_(300)
    st.depth.copy_(torch.arange(n + 1, device=device).clamp(max=n - 1).expand(batch, -1))
    st.tok.copy_(torch.arange(n + 1, device=device).expand(batch, -1) + 7)
    st.real.fill_(1)
    st.limit.fill_(1 << 40)
    st.budget.fill_(1 << 40)
    st.max_tokens.fill_(1 << 40)
    return st


def one_cycle(st, table, plan, draft, block_size: int) -> None:
    from vllm_spd.core.stage_plan import plan_stages

    live = st.live()
    plan_stages(st, live, table, block_size, plan)
    # accept every draft: the target equals the candidate that completes
    cand = st.tok.gather(1, (st.wlen - 2).clamp(min=0)[:, None])[:, 0]
    st.advance(live, draft, cand)


def time_cycle(n: int, batch: int, backend: str, device, dry: bool) -> float | None:
    from vllm_spd.kernels import ENV_BACKEND

    before = os.environ.get(ENV_BACKEND)
    os.environ[ENV_BACKEND] = backend   # read when a cycle is captured
    try:
        return _time_cycle(n, batch, device, dry)
    finally:
        if before is None:
            os.environ.pop(ENV_BACKEND)
        else:
            os.environ[ENV_BACKEND] = before


def _time_cycle(n: int, batch: int, device, dry: bool) -> float | None:
    from vllm_spd.core.stage_plan import StagePlan

    st = steady_state(n, batch, device)
    table = torch.randint(0, 4096, (batch, 128), dtype=torch.int32, device=device)
    plan = StagePlan.allocate(n, batch, device)
    draft = torch.full((batch,), 11, dtype=torch.int64, device=device)
    if dry:
        one_cycle(st, table, plan, draft, 16)
        return None
    for _ in range(3):
        one_cycle(st, table, plan, draft, 16)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CYCLES_PER_GRAPH):
            one_cycle(st, table, plan, draft, 16)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(1000 * start.elapsed_time(end) / CYCLES_PER_GRAPH)
    return round(sorted(times)[len(times) // 2], 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dry = a.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    rows = []
    for n in a.stages:
        for b in a.batch:
            row = {"num_stages": n, "batch": b}
            for backend in ("torch", "triton"):
                if dry and backend == "triton":
                    continue
                row[f"{backend}_us_per_cycle"] = time_cycle(n, b, backend, device, dry)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cycles_per_graph": CYCLES_PER_GRAPH}
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
