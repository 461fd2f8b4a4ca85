"""Training on every GPU of a node: the process group under ``torchrun``.

``torchrun --nproc-per-node N -m vllm_spd.train ...`` starts N copies of the trainer. Each
sees one GPU (``CUDA_VISIBLE_DEVICES`` is narrowed to its ``LOCAL_RANK`` before CUDA
starts, so its vLLM engine and its training both land there), answers its share of the
generation prompts with its own vLLM engine, and trains the draft module under
``DistributedDataParallel`` on its share of every global batch. NCCL joins the GPUs, gloo
the processes of a CPU run. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) everything
here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        """The job's layout as torchrun gives it (one process without torchrun)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that logs, saves and prints (rank 0)."""
        return self.rank == 0

    def pin_gpu(self) -> None:
        """Leave this process only its own GPU, before anything starts CUDA: the vLLM
        engine that generates its data and its training then both use it as device 0."""
        if not self.on or "CUDA_VISIBLE_DEVICES_PINNED_BY_SPD" in os.environ:
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else None
        if gpus is None:
            try:
                import subprocess

                out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
                gpus = [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
            except (OSError, subprocess.SubprocessError):
                gpus = []
        if not gpus:
            return          # a CPU run
        if self.local_rank >= len(gpus):
            raise SystemExit(f"torchrun started {self.local_rank + 1}+ processes on this node but it has only "
                             f"{len(gpus)} GPU(s): use --nproc-per-node {len(gpus)} or fewer")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[self.local_rank]
        os.environ["CUDA_VISIBLE_DEVICES_PINNED_BY_SPD"] = "1"

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on GPUs, gloo on CPU); torchrun's environment
        says where to meet."""
        if not self.on or torch.distributed.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world)

    def close(self) -> None:
        if self.on and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def share(self, items: list) -> list:
        """This process's share of ``items``: every world-th from its rank on."""
        return items[self.rank::self.world] if self.on else list(items)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` added up over the processes (float64)."""
        if not self.on:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def agree(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's ``values`` on every process: decisions from clocks (a time budget) must
        be the same everywhere, or the processes stop at different steps and hang."""
        if not self.on:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.broadcast(t, 0)
        return t.tolist()

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()
