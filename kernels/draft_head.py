"""Draft head of the PDM: final RMSNorm -> draft-vocabulary logits -> token (+ q).

The head scores only the K draft tokens (``lm_head: [K, H]``) and maps the winner back
to a full-vocabulary id through ``draft_token_ids[K]`` (int64, draft index -> token id).

* Greedy (``sampling=None``): returns ``(ids[R], None)``; on CUDA the fused kernel never
  writes the ``[R, K]`` logits (see ``draft_head_triton``).  Ties go to the lowest draft
  index, in the kernel and in the reference alike (``torch.argmax`` returns the first
  maximum).
* Sampling: verification needs the draft distribution ``q`` over K, so the logits are
  materialised (fused norm+matmul kernel on CUDA), then warped and sampled here in torch:
  temperature, top-k, top-p, in that order (HF/vLLM semantics: top-k keeps ties at the
  k-th value, top-p keeps the smallest set whose mass reaches ``top_p``, at least one
  token).  Rows with ``temperature < SAMPLING_EPS`` are greedy rows: ``q`` is one-hot at
  their argmax.  Returns ``(ids[R], q[R, K] fp32)``.

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

from .backend import resolve_backend

#: Same threshold as vLLM's sampler: below it a temperature means greedy.
SAMPLING_EPS = 1e-5


@dataclass
class DraftSampling:
    """Per-row (per-request) sampling parameters of the draft head.

    ``top_k``/``top_p`` of ``None`` mean "off for every row" and skip the sort;
    per row, ``top_k <= 0`` (or >= K) and ``top_p >= 1`` are off.  ``generators`` maps a
    row to the ``torch.Generator`` of a seeded request (on the logits' device); other
    rows draw from the default generator.
    """

    temperature: torch.Tensor  # [R] float
    top_k: Optional[torch.Tensor] = None  # [R] int
    top_p: Optional[torch.Tensor] = None  # [R] float
    generators: dict[int, torch.Generator] = field(default_factory=dict)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def draft_logits_reference(hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                           lm_head: torch.Tensor) -> torch.Tensor:
    """``[R, K]`` fp32 draft logits of the rows ``hidden[R, H]``."""
    return rms_norm_reference(hidden, norm_weight, eps).float() @ lm_head.float().t()


def _top_k_top_p(logits: torch.Tensor, top_k: Optional[torch.Tensor],
                 top_p: Optional[torch.Tensor]) -> torch.Tensor:
    """Set filtered logits to -inf (per-row k and p, no host sync)."""
    num_cols = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1)  # ascending
    if top_k is not None:
        k = torch.where(top_k <= 0, num_cols, top_k).clamp(1, num_cols).long()
        kth = sorted_logits.gather(1, (num_cols - k).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    if top_p is not None:
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= (1.0 - top_p.to(cum.dtype)).unsqueeze(1)
        drop[:, -1] = False  # the most likely token always survives
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def warp_draft_probs(logits: torch.Tensor, sampling: DraftSampling) -> torch.Tensor:
    """Draft distribution q ``[R, K]`` fp32 after temperature, top-k, top-p."""
    logits = logits.float()
    greedy = sampling.temperature < SAMPLING_EPS
    temperature = torch.where(greedy, 1.0, sampling.temperature.float())
    warped = logits / temperature.unsqueeze(1)
    if sampling.top_k is not None or sampling.top_p is not None:
        warped = _top_k_top_p(warped, sampling.top_k, sampling.top_p)
    probs = warped.softmax(-1)
    one_hot = torch.zeros_like(probs).scatter_(1, logits.argmax(-1, keepdim=True), 1.0)
    return torch.where(greedy.unsqueeze(1), one_hot, probs)


def sample_draft(q: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """One index per row drawn from ``q`` (exponential race: argmax q/E, E ~ Exp(1)).

    The race needs no normalisation or cumsum and is exact; a one-hot row returns its
    hot index.  Seeded rows draw their noise from their own generator, so a request's
    draft does not depend on its batch neighbours.
    """
    noise = torch.empty_like(q).exponential_()
    for row, gen in generators.items():
        noise[row].exponential_(generator=gen)
    return (q / noise.clamp_min_(torch.finfo(noise.dtype).tiny)).argmax(-1)


def draft_head_reference(hidden, norm_weight, eps, lm_head, draft_token_ids,
                         sampling: Optional[DraftSampling] = None):
    """Torch reference / CPU path of ``draft_head`` (same contract)."""
    logits = draft_logits_reference(hidden, norm_weight, eps, lm_head)
    if sampling is None:
        return draft_token_ids[logits.argmax(-1)], None
    q = warp_draft_probs(logits, sampling)
    return draft_token_ids[sample_draft(q, sampling.generators)], q


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
    use_triton = resolve_backend(hidden, backend) == "triton"
    if use_triton:
        from . import draft_head_triton as fused
    if sampling is None:
        if use_triton:
            return fused.draft_greedy_triton(hidden, norm_weight, eps, lm_head, draft_token_ids), None
        return draft_head_reference(hidden, norm_weight, eps, lm_head, draft_token_ids)
    if use_triton:
        logits = fused.draft_logits_triton(hidden, norm_weight, eps, lm_head)
    else:
        logits = draft_logits_reference(hidden, norm_weight, eps, lm_head)
    q = warp_draft_probs(logits, sampling)
    return draft_token_ids[sample_draft(q, sampling.generators)], q
