"""Profile one SPD decode step per rank with the PyTorch profiler (off unless asked).

Set ``VLLM_SPD_PROFILE_DIR`` to a folder: the ``VLLM_SPD_PROFILE_STEP``-th decode step
(default 10, so the engine is warm) of every rank is profiled, and
``spd_profile_rank{R}.txt`` (operator tables by host and by device time) and
``spd_trace_rank{R}.json.gz`` (a gzipped Chrome trace) are written there. A tool for finding
per-cycle host overhead on GPUs; it slows the profiled step down.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch

from vllm_spd import envs


class StepProfiler:
    def __init__(self, rank: int):
        self.rank = rank
        self.out_dir = envs.profile_dir()
        self.target = envs.profile_step()
        self.steps = 0

    def arm(self, after: int) -> None:
        """Profile the ``after``-th decode step from now instead (benchmarks pick a
        steady-state step this way)."""
        self.target = self.steps + after

    def decode_step(self, timer):
        """Context for one decode step: profiles it when it is the chosen one, with the
        cycle ``timer``'s phases named in the profile."""
        if not self.out_dir:
            return nullcontext()
        self.steps += 1
        return self._profile(timer) if self.steps == self.target else nullcontext()

    @contextmanager
    def _profile(self, timer):
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        timer.label = True
        try:
            with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
                yield
        finally:
            timer.label = False
        os.makedirs(self.out_dir, exist_ok=True)
        ka = prof.key_averages()
        with open(os.path.join(self.out_dir, f"spd_profile_rank{self.rank}.txt"), "w") as f:
            f.write(ka.table(sort_by="cpu_time_total", row_limit=45))
            if torch.cuda.is_available():
                f.write("\n\n")
                f.write(ka.table(sort_by="self_cuda_time_total", row_limit=30))
        prof.export_chrome_trace(os.path.join(self.out_dir, f"spd_trace_rank{self.rank}.json.gz"))
