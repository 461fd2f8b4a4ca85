"""What every stage runs in a cycle, and its attention rows, computed once per cycle.

Before a cycle's stages run, one call fills a :class:`StagePlan` for all ``n`` stages at
once: for stage ``s`` and batch row ``b``, whether a token of depth ``s`` is in flight
(``runs``), that token and its position, and the rows attention reads (the position
clamped to 0, the sequence length, and the KV slot: -1 where the stage writes nothing,
past the request's allocated blocks or for a row that sits the cycle out). Each stage's
attention metadata points at its own row of these buffers, so a CUDA graph of a whole
cycle replays on the same memory.

On a GPU this is one fused Triton launch (``kernels/stage_plan_triton.py``); elsewhere
it is the torch code here, the reference the kernel is tested against. Nothing here
knows vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from vllm_spd.core.cycle_state import CycleState
from vllm_spd.kernels.backend import FusedKernel

_PLAN = FusedKernel("stage plan")


@dataclass
class StagePlan:
    runs: torch.Tensor       # [n, B] bool: a token of depth s is in flight in a live row
    tok: torch.Tensor        # [n, B] that token (slot 0's where none)
    pos: torch.Tensor        # [n, B] its position (``head`` where none)
    positions: torch.Tensor  # [n, B] int64: the position attention uses (clamped to 0)
    seq_lens: torch.Tensor   # [n, B] int32: position + 1 where the stage writes a KV slot, else 1
    slots: torch.Tensor      # [n, B] int64: the KV slot, -1 for none

    @classmethod
    def allocate(cls, num_stages: int, batch: int, device="cpu") -> "StagePlan":
        def z(dtype):
            return torch.zeros(num_stages, batch, dtype=dtype, device=device)

        return cls(runs=z(torch.bool), tok=z(torch.int64), pos=z(torch.int64), positions=z(torch.int64),
                   seq_lens=torch.ones(num_stages, batch, dtype=torch.int32, device=device),
                   slots=torch.full((num_stages, batch), -1, dtype=torch.int64, device=device))

    def rows(self, count: int) -> "StagePlan":
        """The first ``count`` batch rows of every stage, as views of the same memory."""
        return StagePlan(**{f.name: getattr(self, f.name)[:, :count] for f in fields(self)})

    def stage(self, s: int):
        """``(runs, tok, pos)`` of stage ``s``."""
        return self.runs[s], self.tok[s], self.pos[s]


def device_slots(block_table: torch.Tensor, pos: torch.Tensor, ok: torch.Tensor, block_size: int) -> torch.Tensor:
    """KV slot of each row's position (``block_table [R, blocks]``, ``pos`` and ``ok`` of
    shape ``[R]`` or ``[R, k]``), computed on the device; -1 (no KV write) where not ``ok``."""
    p = pos.clamp(min=0)
    col = (p // block_size).clamp(max=block_table.shape[1] - 1)
    blocks = block_table.gather(1, col if col.dim() == 2 else col[:, None]).view_as(p).to(torch.int64)
    return torch.where(ok, blocks * block_size + p % block_size, torch.full_like(p, -1))


def plan_stages(st: CycleState, live: torch.Tensor, block_table: torch.Tensor, block_size: int,
                out: StagePlan) -> None:
    """Fill ``out`` (``[n, B]`` for the ``B`` rows of ``st``) for the cycle about to run.
    ``block_table [B, blocks]`` int32. One fused launch for CUDA state, the torch
    reference otherwise."""
    if _PLAN.wanted(st.tok):
        from vllm_spd.kernels.stage_plan_triton import plan_stages_triton

        if _PLAN.run(lambda: plan_stages_triton(st, live, block_table, block_size, out)):
            return
    plan_stages_reference(st, live, block_table, block_size, out)


def plan_stages_reference(st: CycleState, live, block_table, block_size: int, out: StagePlan) -> None:
    runs, tok, pos = st.stage_plan(live)
    ok = runs & (pos < st.limit[None]) & (pos >= 0)
    p = pos.clamp(min=0)
    out.runs.copy_(runs)
    out.tok.copy_(tok)
    out.pos.copy_(pos)
    out.positions.copy_(p)
    out.seq_lens.copy_(torch.where(ok, p + 1, torch.ones_like(p)).to(torch.int32))
    out.slots.copy_(device_slots(block_table, pos.t(), ok.t(), block_size).t())
