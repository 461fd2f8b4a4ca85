"""Cross-depth aggregation of the Pipeline Draft Module: packed weights, torch reference, dispatch.

A PDM row (one token) of aggregation type ``a`` is the projection of the concatenated
anchor hidden states ``0..a`` of that token: ``y = W_a @ cat(h_0, ..., h_a) (+ b_a)`` with
``W_a: [H, (a+1)*H]``.  Anchors are passed as ONE strided tensor ``anchors[m', S, H]``
(``m' >= m``; ``anchors[j, s]`` = anchor ``j`` of the token in slot ``s``), plus an optional
``slots[R]`` mapping row ``r`` to its slot (default: row ``r`` reads slot ``r``).  Why this
layout: a single tensor keeps one static address for CUDA graphs, any per-anchor buffer
layout (``[S, m, H]`` included) is a stride permutation of it, and ``slots`` lets rows point
into a persistent snapshot ring without gathering them first.  Entries ``anchors[j, s]``
with ``j`` above the row's type are never read, so partially filled snapshots are fine.

Worked example (H=2, m=2): ``types=[1, 0]``; row 0 gives ``W_1 @ [h0, h1]`` (width 4),
row 1 gives ``W_0 @ h0`` (width 2).

``row_types`` must lie in ``[0, m)``; rows with other values are left unwritten (the kernel
cannot raise without a host sync).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .backend import resolve_backend


@dataclass(frozen=True)
class PackedAggregation:
    """The projections of all aggregation types in one flat buffer.

    ``weight`` is ``cat([W_0.flatten(), ..., W_{m-1}.flatten()])``: type ``a`` is row-major
    ``[H, (a+1)*H]`` from element ``offsets[a] = H*H*a(a+1)/2`` (a triangular layout the
    kernel relies on; checked here).  One buffer lets one kernel launch serve every type,
    and nn.Linear weights can be views of it (``type_weight``), so the model keeps no
    second copy.
    """

    weight: torch.Tensor  # [H*H*m(m+1)/2], 1-D, contiguous
    offsets: tuple[int, ...]  # element offset of each type
    bias: Optional[torch.Tensor]  # [m, H] or None
    hidden_size: int
    num_types: int

    def __post_init__(self):
        h, m = self.hidden_size, self.num_types
        if tuple(self.offsets) != tuple(type_offset(h, a) for a in range(m)):
            raise ValueError("offsets must follow the triangular layout H*H*a(a+1)/2")
        if self.weight.dim() != 1 or not self.weight.is_contiguous() or self.weight.numel() != type_offset(h, m):
            raise ValueError(f"weight must be contiguous 1-D with {type_offset(h, m)} elements")
        if self.bias is not None and (tuple(self.bias.shape) != (m, h) or not self.bias.is_contiguous()):
            raise ValueError(f"bias must be contiguous [{m}, {h}]")

    @classmethod
    def from_buffer(cls, weight: torch.Tensor, hidden_size: int, num_types: int,
                    bias: Optional[torch.Tensor] = None) -> "PackedAggregation":
        """Wrap an already packed buffer (e.g. loaded from a checkpoint)."""
        offsets = tuple(type_offset(hidden_size, a) for a in range(num_types))
        return cls(weight, offsets, bias, hidden_size, num_types)

    def type_weight(self, a: int) -> torch.Tensor:
        """View ``[H, (a+1)*H]`` of type ``a``'s projection inside ``weight``."""
        h = self.hidden_size
        start = self.offsets[a]
        return self.weight[start:start + (a + 1) * h * h].view(h, (a + 1) * h)


def type_offset(hidden_size: int, a: int) -> int:
    """Element offset of type ``a`` in the packed buffer: ``H*H*(1+2+...+a)``."""
    return hidden_size * hidden_size * a * (a + 1) // 2


def pack_aggregation_weights(
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> PackedAggregation:
    """Pack ``[W_0, ..., W_{m-1}]`` (``W_a: [H, (a+1)*H]``) and optional biases.

    Missing biases in a partly biased list count as zeros.  The result lives on the
    weights' device and dtype (copy once at load time, then point the Linear layers at
    ``type_weight(a)`` if the model should not keep the originals).
    """
    if not weights:
        raise ValueError("need at least one aggregation weight")
    h = weights[0].shape[0]
    dtype, device = weights[0].dtype, weights[0].device
    for a, w in enumerate(weights):
        if tuple(w.shape) != (h, (a + 1) * h):
            raise ValueError(f"aggregation weight {a} has shape {tuple(w.shape)}, expected {(h, (a + 1) * h)}")
        if w.dtype != dtype or w.device != device:
            raise ValueError("all aggregation weights must share dtype and device")
    m = len(weights)
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    bias = None
    if biases is not None and any(b is not None for b in biases):
        if len(biases) != m:
            raise ValueError(f"got {len(biases)} biases for {m} aggregation types")
        bias = torch.zeros(m, h, dtype=dtype, device=device)
        for a, b in enumerate(biases):
            if b is not None:
                bias[a].copy_(b.detach())
    return PackedAggregation.from_buffer(flat, h, m, bias)


def _check(anchors: torch.Tensor, row_types: torch.Tensor, packed: PackedAggregation) -> None:
    if anchors.dim() != 3 or anchors.shape[2] != packed.hidden_size:
        raise ValueError(f"anchors must be [m, S, {packed.hidden_size}], got {tuple(anchors.shape)}")
    if anchors.shape[0] < packed.num_types:
        raise ValueError(f"anchors hold {anchors.shape[0]} anchors, types need {packed.num_types}")
    if row_types.dim() != 1:
        raise ValueError("row_types must be 1-D [R]")


def aggregate_anchors_reference(
    anchors: torch.Tensor,
    row_types: torch.Tensor,
    packed: PackedAggregation,
    slots: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain torch: per type, gather its rows, concatenate their anchors, project in fp32.

    This is the oracle of the Triton kernel and the CPU path.  It builds exactly the
    concatenated ``[rows, (a+1)*H]`` copy the kernel avoids, and syncs the host on CUDA
    (``nonzero``), which is fine for a reference.
    """
    _check(anchors, row_types, packed)
    h = packed.hidden_size
    if out is None:
        out = anchors.new_empty(row_types.shape[0], h)
    per_row = anchors if slots is None else anchors[:, slots]  # [m', R, H]
    for a in range(packed.num_types):
        rows = torch.nonzero(row_types == a).squeeze(1)
        if rows.numel() == 0:
            continue
        x = per_row[: a + 1, rows].transpose(0, 1).reshape(rows.numel(), (a + 1) * h)
        y = x.float() @ packed.type_weight(a).float().t()
        if packed.bias is not None:
            y = y + packed.bias[a].float()
        out[rows] = y.to(out.dtype)
    return out


def aggregate_anchors(
    anchors: torch.Tensor,
    row_types: torch.Tensor,
    packed: PackedAggregation,
    slots: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Aggregated PDM inputs ``[R, H]`` (dtype of ``out``, else of ``anchors``).

    Triton (one launch for all rows) on CUDA, torch reference otherwise; see
    ``backend.resolve_backend`` for ``backend`` and the ``VLLM_SPD_KERNELS`` override.
    """
    if resolve_backend(anchors, backend) == "triton":
        from .aggregation_triton import aggregate_anchors_triton

        return aggregate_anchors_triton(anchors, row_types, packed, slots=slots, out=out)
    return aggregate_anchors_reference(anchors, row_types, packed, slots=slots, out=out)
