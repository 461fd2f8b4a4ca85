"""Draft head of the PDM: final RMSNorm -> draft-vocabulary logits -> token (+ q).

The head scores only the K draft tokens (``lm_head: [K, H]``) and maps the winner back
to a full-vocabulary id through ``draft_token_ids[K]`` (int64, draft index -> token id).

* Greedy (``sampling=None``): returns ``(ids[R], None)``; on CUDA the fused kernel never
  writes the ``[R, K]`` logits (see ``draft_head_triton``).  Ties go to the lowest draft
  index, in the kernel and in the reference alike (``torch.argmax`` returns the first
  maximum).
* Sampling: verification needs the draft distribution ``q`` over K, so the logits are
  materialised (fused norm+matmul kernel on CUDA, the torch reference otherwise) and
  handed to ``vllm_spd.core.verify.draft_proposal``, the project's one implementation of
  vLLM's warping (temperature, min-p, top-k, top-p) and sampling.  Rows with
  ``temperature < verify.SAMPLING_EPS`` are greedy rows: ``q`` is one-hot at their
  argmax.  Returns ``(ids[R], q[R, K] fp32)``.

The RMSNorm rounds like vLLM's: normalise in fp32, cast to the input dtype, multiply by
the weight in that dtype; logits accumulate in fp32.

CUDA graphs: the greedy path is capturable.  The sampling path makes no host sync, but
seeded rows draw from their own ``torch.Generator``s, which a graph replay would not
advance unless registered with the graph; run it eagerly (it is off the critical path:
q is needed only cycles later, at verification).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from vllm_spd.core.verify import draft_proposal

from .backend import resolve_backend


@dataclass
class DraftSampling:
    """Per-row (per-request) sampling parameters of the draft head.

    The fields are ``vllm_spd.core.verify.draft_proposal``'s arguments: ``None`` for
    ``top_k``/``top_p``/``min_p`` means "off for every row"; per row, ``top_k <= 0``
    (or >= K), ``top_p >= 1`` and ``min_p == 0`` are off.  ``generators`` maps a row to
    the ``torch.Generator`` of a seeded request (on the logits' device); other rows draw
    from the default generator.
    """

    temperature: torch.Tensor  # [R] float
    top_k: Optional[torch.Tensor] = None  # [R] int
    top_p: Optional[torch.Tensor] = None  # [R] float
    min_p: Optional[torch.Tensor] = None  # [R] float
    generators: dict[int, torch.Generator] = field(default_factory=dict)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def draft_logits_reference(hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                           lm_head: torch.Tensor) -> torch.Tensor:
    """``[R, K]`` fp32 draft logits of the rows ``hidden[R, H]``."""
    return rms_norm_reference(hidden, norm_weight, eps).float() @ lm_head.float().t()


def _propose(logits: torch.Tensor, draft_token_ids: torch.Tensor,
             sampling: DraftSampling) -> tuple[torch.Tensor, torch.Tensor]:
    return draft_proposal(logits, draft_token_ids, sampling.temperature, top_k=sampling.top_k,
                          top_p=sampling.top_p, min_p=sampling.min_p,
                          generators=sampling.generators or None)


def draft_head_reference(hidden, norm_weight, eps, lm_head, draft_token_ids,
                         sampling: Optional[DraftSampling] = None):
    """Torch reference / CPU path of ``draft_head`` (same contract)."""
    logits = draft_logits_reference(hidden, norm_weight, eps, lm_head)
    if sampling is None:
        return draft_token_ids[logits.argmax(-1)], None
    return _propose(logits, draft_token_ids, sampling)


def draft_head(
    hidden: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    lm_head: torch.Tensor,
    draft_token_ids: torch.Tensor,
    sampling: Optional[DraftSampling] = None,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Draft tokens of rows ``hidden[R, H]``: ``(full-vocab ids [R] int64, q [R, K] or None)``.

    Example: K=3, ``draft_token_ids=[5, 17, 940]``, greedy logits ``[[0.1, 2.0, 2.0]]``
    -> ``(tensor([17]), None)`` (tie -> lowest draft index 1 -> token 17).
    """
    if resolve_backend(hidden, backend) != "triton":
        return draft_head_reference(hidden, norm_weight, eps, lm_head, draft_token_ids, sampling)
    from . import draft_head_triton as fused

    if sampling is None:
        return fused.draft_greedy_triton(hidden, norm_weight, eps, lm_head, draft_token_ids), None
    return _propose(fused.draft_logits_triton(hidden, norm_weight, eps, lm_head), draft_token_ids, sampling)
