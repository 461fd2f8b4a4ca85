"""Random numbers keyed on (request seed, position, purpose), computed on the device.

The device cycle samples drafts, accepts or rejects them and samples corrected tokens
inside captured graphs, with no per-request ``torch.Generator`` to draw from. Each draw
is instead a fixed function of the request's seed, the position it decides and what it
is for (``SALT_*``), so a seeded request gives the same output in every engine step
split, batch and placement. That is lossless: a position's acceptance draw and residual
draw are used once (a position is verified once), and a draft thrown away by a flush
influenced nothing that was committed, so drawing its replacement from the same key is
as good as a fresh draw.

The hash works on 32-bit halves held in int64 tensors (products stay below 2**63), so
it gives the same bits on CPU and GPU.
"""

from __future__ import annotations

import torch

SALT_DRAFT = 1        # the draft module's sample for a position
SALT_ACCEPT = 2       # the acceptance test of the draft at a position
SALT_RESIDUAL = 3     # the corrected token sampled at a position after a rejection

_MASK = 0xFFFFFFFF
_MUL = 0x45D9F3B      # < 2**27: x * _MUL < 2**59 for 32-bit x


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (values in [0, 2**32))."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK
    x = x ^ (x >> 16)
    x = (x * _MUL) & _MASK
    return x ^ (x >> 16)


def _key(seed: torch.Tensor, pos: torch.Tensor, salt: int) -> torch.Tensor:
    """[B] 32-bit keys of (seed, position, salt)."""
    h = _mix((seed & _MASK) ^ 0x3C6EF372)
    h = _mix(h ^ ((seed >> 32) & _MASK))
    h = _mix(h ^ (pos & _MASK))
    return _mix(h ^ (salt * 0x1B873593 & _MASK))


def uniform(seed: torch.Tensor, pos: torch.Tensor, salt: int, width: int | None = None) -> torch.Tensor:
    """U(0, 1) float64, ``[B]`` (``width`` None) or ``[B, width]`` (one per index)."""
    key = _key(seed.to(torch.int64), pos.to(torch.int64), salt)
    if width is None:
        bits = key
    else:
        idx = torch.arange(width, device=key.device, dtype=torch.int64)
        bits = _mix(key[:, None] ^ _mix(idx + 0x27D4EB2F)[None, :])
    return (bits.to(torch.float64) + 0.5) / 2.0 ** 32


def exponential(seed: torch.Tensor, pos: torch.Tensor, salt: int, width: int) -> torch.Tensor:
    """Exp(1) float32 ``[B, width]``: the noise of an exponential race over ``width`` ids."""
    return (-torch.log(uniform(seed, pos, salt, width))).to(torch.float32)
