"""Per-cycle time split of one rank, for benchmarks (off unless switched on).

Phases of a cycle on a rank: ``draft`` (controller: drafter / draft module), ``stage``
(this rank's layers), ``verify`` (controller: final norm, logits, verification),
``control`` (the controller's broadcast of drafts and verdicts: on the other ranks this
is where they wait for the controller), ``hop`` (receiving the previous stage's rows
and anchors), ``commit`` (bookkeeping). Timing a phase synchronises the device at
both ends, so a timed run is slower than an untimed one: benchmarks take tokens/s
from untimed runs and the split from a timed one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

PHASES = ("draft", "stage", "verify", "control", "hop", "commit")


class CycleTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.enabled = False
        #: name each phase in a PyTorch profile (set while a step is profiled)
        self.label = False
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cycles = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        if self.label:
            with torch.profiler.record_function(f"spd.{name}"):
                with self._timed(name):
                    yield
        else:
            with self._timed(name):
                yield

    @contextmanager
    def _timed(self, name: str):
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def cycle_done(self) -> None:
        if self.enabled:
            self.cycles += 1

    def summary(self) -> dict:
        """Milliseconds per cycle for each phase, and the cycle count."""
        per = {p: 1000 * self.seconds.get(p, 0.0) / max(self.cycles, 1) for p in PHASES}
        return {"cycles": self.cycles, "ms_per_cycle": per, "total_ms_per_cycle": sum(per.values())}
