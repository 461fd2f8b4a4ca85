"""Kernels of the Pipeline Draft Module (``vllm_spd.kernels``).

Each op has a plain torch reference (the CPU path and the test oracle) and a Triton
kernel used for CUDA tensors; the dispatch functions pick one (``backend.py``).

* ``aggregate_anchors``: per row, project the concatenated anchors ``0..type`` with the
  type's weight from a ``PackedAggregation`` -- one launch for all rows of a cycle.
* ``draft_head``: final RMSNorm + draft-vocabulary logits + greedy argmax (or, given a
  ``DraftSampling``, the logits handed to ``vllm_spd.core.verify.draft_proposal`` for the
  warped q and a sample), returning full-vocabulary ids.

The Triton modules (``aggregation_triton``, ``draft_head_triton``) are imported only
when a CUDA tensor needs them.
"""

from .aggregation import (
    PackedAggregation,
    aggregate_anchors,
    aggregate_anchors_reference,
    pack_aggregation_weights,
)
from .backend import ENV_BACKEND, resolve_backend
from .draft_head import (
    DraftSampling,
    draft_head,
    draft_head_reference,
    draft_logits_reference,
    rms_norm_reference,
)

__all__ = [
    "ENV_BACKEND",
    "DraftSampling",
    "PackedAggregation",
    "aggregate_anchors",
    "aggregate_anchors_reference",
    "draft_head",
    "draft_head_reference",
    "draft_logits_reference",
    "pack_aggregation_weights",
    "resolve_backend",
    "rms_norm_reference",
]
