"""Single-draft verification for Speculative Pipeline Decoding (SPD).

In SPD exactly one draft token is verified per cycle and request: the target's
final hidden state at position ``c`` gives the target distribution ``p`` for
position ``c+1``, which checks the in-flight draft ``x`` at ``c+1``
(spd_algorithm.md §3.3). There is no bonus token: on accept nothing else is
emitted, on reject the *corrected* token is emitted instead of the draft.

Everything here is pure torch, batched over ``B`` rows (one row per request),
vectorised over the vocabulary, and free of host syncs (no ``.item()``,
``.tolist()`` or data-dependent Python branches). The only Python loop runs
over the rows that own a per-request ``torch.Generator`` (vLLM does the same).

Sampling semantics follow vLLM 0.32.0's ``Sampler`` (``vllm/v1/sample/
sampler.py`` + ``ops/topk_topp_sampler.py`` + the built-in min-p logits
processor), in this order:

1. ``logits.float()``; rows with ``temperature < 1e-5`` (``_SAMPLING_EPS``) are
   greedy. Their temperature is replaced by 1 before dividing.
2. ``logits / temperature``.
3. min-p (an *argmax-invariant logits processor*, so it runs **before**
   top-k/top-p): mask tokens whose probability (softmax of the
   temperature-scaled logits) is ``< min_p * max_prob``.
4. top-k then top-p, computed on the ascending sort of the logits: top-k keeps
   every logit ``>=`` the k-th largest (ties at the threshold are all kept);
   top-p renormalises the survivors and masks the sorted prefix whose
   cumulative probability is ``<= 1 - top_p``, always keeping the largest.
5. The sampled distribution is ``softmax`` of the result (vLLM samples it with
   an exponential race / Gumbel-max, i.e. exactly this distribution).

Greedy rows sample ``argmax(logits)`` (first index on ties), so their
"distribution" is one-hot.

The draft side (spd_algorithm.md §2.3) lives on a draft vocabulary of ``K``
sorted full-vocab ids ``draft_token_ids``; the proposal ``q`` is warped the same
way as the target (over the K draft logits) and scattered into the full vocab
(zeros elsewhere) for rejection sampling.

RNG consumption (relevant for per-request seeds): :func:`draft_proposal` draws
``K`` exponentials per row; :func:`verify_sampled` draws one float64 uniform
and then ``V`` exponentials per row, every call, whether or not the row
rejects. A row that owns a generator draws only from it, so its result does not
depend on the other rows of the batch.
"""

from __future__ import annotations

import torch

__all__ = [
    "SAMPLING_EPS",
    "greedy_mask",
    "warp_logits",
    "target_probs",
    "scatter_draft_probs",
    "sample_from_probs",
    "draft_proposal",
    "acceptance_probability",
    "verify_greedy",
    "verify_sampled",
    "verify",
]

#: Same value as ``vllm.v1.sample.sampler._SAMPLING_EPS``: temperatures below
#: it mean greedy decoding.
SAMPLING_EPS = 1e-5

def _rows(x, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Broadcast a per-row parameter (python scalar or tensor) to shape [B]."""
    t = torch.as_tensor(x, dtype=dtype, device=device)
    return t.expand(batch) if t.dim() == 0 else t.to(dtype)


def greedy_mask(temperature: torch.Tensor) -> torch.Tensor:
    """Bool [B]: rows that vLLM decodes greedily (``temperature < 1e-5``)."""
    return temperature < SAMPLING_EPS


def warp_logits(
    logits: torch.Tensor,
    temperature,
    top_k=None,
    top_p=None,
    min_p=None,
) -> torch.Tensor:
    """Return the processed float32 logits vLLM's sampler draws from.

    Args:
        logits: [B, V] raw logits (any float dtype; not modified).
        temperature: [B] (or scalar). Greedy rows (< 1e-5) are divided by 1.
        top_k: [B] ints or None. ``<= 0`` (vLLM's 0 / -1) or ``>= V`` = off.
        top_p: [B] floats in (0, 1] or None. 1.0 = off.
        min_p: [B] floats in [0, 1] or None. 0 = off.

    Masked entries are ``-inf``. ``None`` for a parameter skips that step for
    the whole batch (as vLLM does when no request uses it); a per-row "off"
    value has the same effect on that row.

    Example::

        >>> warp_logits(torch.tensor([[2., 1., 0.]]), torch.tensor([1.]),
        ...             top_k=torch.tensor([2]))
        tensor([[2., 1., -inf]])
    """
    batch, vocab = logits.shape
    device = logits.device
    out = logits.to(torch.float32, copy=True)
    temp = _rows(temperature, batch, torch.float32, device)
    temp = torch.where(temp < SAMPLING_EPS, torch.ones_like(temp), temp)
    out.div_(temp.unsqueeze(1))

    if min_p is not None:
        mp = _rows(min_p, batch, torch.float32, device).unsqueeze(1)
        probs = out.softmax(dim=-1)
        thresh = probs.amax(dim=-1, keepdim=True).mul_(mp)
        out.masked_fill_(probs < thresh, float("-inf"))

    if top_k is None and top_p is None:
        return out

    srt, idx = out.sort(dim=-1, descending=False)
    if top_k is not None:
        k = _rows(top_k, batch, torch.long, device)
        k = torch.where((k <= 0) | (k > vocab), torch.full_like(k, vocab), k)
        kth = srt.gather(1, (vocab - k).unsqueeze(1))  # k-th largest value
        srt.masked_fill_(srt < kth, float("-inf"))
    if top_p is not None:
        tp = _rows(top_p, batch, torch.float32, device).unsqueeze(1)
        cum = srt.softmax(dim=-1).cumsum_(dim=-1)
        drop = cum <= 1 - tp
        drop[:, -1] = False  # always keep the most likely token
        srt.masked_fill_(drop, float("-inf"))
    return out.scatter_(1, idx, srt)


def target_probs(
    logits: torch.Tensor,
    temperature,
    top_k=None,
    top_p=None,
    min_p=None,
) -> torch.Tensor:
    """Distribution [B, V] (float32) vLLM would sample from for these settings.

    Sampled rows: ``softmax(warp_logits(...))``. Greedy rows
    (``temperature < 1e-5``): one-hot at ``argmax(logits)``.

    Example::

        >>> target_probs(torch.tensor([[0., 0., 5.], [1., 2., 1.]]),
        ...              torch.tensor([1., 0.]), top_k=torch.tensor([1, 0]))
        tensor([[0., 0., 1.],
                [0., 1., 0.]])
    """
    batch = logits.shape[0]
    temp = _rows(temperature, batch, torch.float32, logits.device)
    probs = warp_logits(logits, temp, top_k, top_p, min_p).softmax(dim=-1)
    onehot = torch.zeros_like(probs).scatter_(
        1, logits.argmax(dim=-1, keepdim=True), 1.0
    )
    return torch.where(greedy_mask(temp).unsqueeze(1), onehot, probs)


def scatter_draft_probs(
    q: torch.Tensor, draft_token_ids: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Scatter a proposal over the draft vocab [B, K] into the full vocab [B, V].

    Example: ``q=[[.25, .75]]``, ``draft_token_ids=[1, 3]``, ``V=4`` ->
    ``[[0, .25, 0, .75]]``.
    """
    ids = draft_token_ids.to(device=q.device, dtype=torch.long)
    out = q.new_zeros(q.shape[0], vocab_size)
    return out.scatter_(1, ids.unsqueeze(0).expand_as(q), q)


def _exponential_like(
    probs: torch.Tensor, generators: dict[int, torch.Generator] | None
) -> torch.Tensor:
    """Exp(1) noise [B, N]; rows with a generator draw from it only."""
    noise = torch.empty_like(probs)
    gens = generators or {}
    if len(gens) != probs.shape[0]:
        noise.exponential_()
    for i, g in gens.items():
        noise[i].exponential_(generator=g)
    # Exp(1) may return exactly 0 in float32; 0/0 would give NaN in the race.
    return noise.clamp_min_(torch.finfo(noise.dtype).tiny)


def _uniform(
    batch: int,
    device: torch.device,
    generators: dict[int, torch.Generator] | None,
) -> torch.Tensor:
    """U[0, 1) float64 [B] (float64 makes an exact 0 negligible, as in vLLM)."""
    u = torch.rand(batch, dtype=torch.float64, device=device)
    for i, g in (generators or {}).items():
        u[i : i + 1].uniform_(generator=g)
    return u


def sample_from_probs(
    probs: torch.Tensor, generators: dict[int, torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One index per row, distributed as ``probs`` (rows need not sum to 1).

    Uses the exponential race ``argmax(probs / E)``, ``E ~ Exp(1)``, like vLLM's
    ``random_sample`` (no host sync, unlike ``torch.multinomial`` on GPU).
    Zero-probability entries are never picked unless a whole row is zero.
    ``noise`` gives ``E`` itself (keyed draws, ``keyed_random``) instead of drawing it.
    """
    e = _exponential_like(probs, generators) if noise is None else noise.clamp_min(torch.finfo(noise.dtype).tiny)
    return (probs / e).argmax(dim=-1)


def draft_proposal(
    draft_logits: torch.Tensor,
    draft_token_ids: torch.Tensor,
    temperature,
    top_k=None,
    top_p=None,
    min_p=None,
    generators: dict[int, torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next draft token from the PDM's draft-vocab logits.

    Args:
        draft_logits: [B, K] logits over the draft vocabulary.
        draft_token_ids: [K] sorted full-vocab ids (draft index -> token id).
        temperature, top_k, top_p, min_p: the request's sampling parameters,
            applied over the K draft logits exactly like :func:`warp_logits`.
        generators: optional ``{row: torch.Generator}`` for seeded requests.
        noise: optional Exp(1) draws ``[B, K]`` used instead of drawing them.

    Returns:
        ``(token_ids [B] int64 full-vocab ids, q [B, K] float32)``. Greedy
        rows: argmax, ``q`` one-hot. Sampled rows: a sample from ``q``.

    Example (greedy)::

        >>> draft_proposal(torch.tensor([[0., 3., 1.]]), torch.tensor([4, 7, 9]),
        ...                torch.tensor([0.]))
        (tensor([7]), tensor([[0., 1., 0.]]))
    """
    batch = draft_logits.shape[0]
    temp = _rows(temperature, batch, torch.float32, draft_logits.device)
    q = target_probs(draft_logits, temp, top_k, top_p, min_p)
    idx = torch.where(
        greedy_mask(temp),
        draft_logits.argmax(dim=-1),
        sample_from_probs(q, generators, noise),
    )
    ids = draft_token_ids.to(device=draft_logits.device, dtype=torch.long)
    return ids[idx], q


def acceptance_probability(
    p: torch.Tensor, q: torch.Tensor, draft_token_ids: torch.Tensor
) -> torch.Tensor:
    """Expected acceptance rate per row: ``sum_x min(p(x), q(x))`` [B]."""
    q_full = scatter_draft_probs(q, draft_token_ids, p.shape[1])
    return torch.minimum(p, q_full).sum(dim=-1)


def verify_greedy(
    target_logits: torch.Tensor, draft_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy check: accept iff the draft equals the target argmax.

    Returns ``(accepted [B] bool, token [B] int64)``; ``token`` is the draft when
    accepted, else the target argmax (the corrected token). Negative draft ids
    (padding) are rejected.

    Example::

        >>> verify_greedy(torch.tensor([[1., 5., 2.], [3., 0., 1.]]),
        ...               torch.tensor([1, 2]))
        (tensor([ True, False]), tensor([1, 0]))
    """
    best = target_logits.argmax(dim=-1)
    draft = draft_ids.to(device=best.device, dtype=torch.long)
    accepted = draft == best
    return accepted, best  # best == draft wherever accepted


def verify_sampled(
    p: torch.Tensor,
    draft_ids: torch.Tensor,
    q: torch.Tensor,
    draft_token_ids: torch.Tensor,
    generators: dict[int, torch.Generator] | None = None,
    uniform: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-draft speculative (rejection) sampling; lossless w.r.t. ``p``.

    Args:
        p: [B, V] target distribution (:func:`target_probs`).
        draft_ids: [B] full-vocab draft tokens, drawn from ``q``.
        q: [B, K] proposal over the draft vocab the draft was sampled from.
        draft_token_ids: [K] sorted full-vocab ids of the draft vocab.
        generators: optional ``{row: torch.Generator}``.
        uniform, noise: optional draws used instead of drawing them: ``u`` [B]
            float64 for the acceptance test, Exp(1) ``[B, V]`` for the residual sample.

    Accept iff ``u * q(x) <= p(x)``, ``q(x) > 0`` and ``p(x) > 0`` (``u ~ U[0,1)``, float64),
    i.e. with probability ``min(1, p(x)/q(x))``. On reject emit a sample from
    ``normalize(max(0, p - q_full))`` (``p`` itself if that mass is ~0). The
    emitted token is then distributed exactly as ``p``.

    Worked example: ``p = [.5, .5, 0]``, ``q_full = [.9, .1, 0]``. Draft 0 is
    accepted w.p. .5/.9, draft 1 always; acceptance rate = .5 + .1 = .6.
    Residual = ``[0, .4, 0]`` -> a rejection always emits token 1:
    P(0) = .9 * .5/.9 = .5, P(1) = .1 + .9 * (.4/.9) = .5.
    """
    batch, vocab = p.shape
    pf = p.to(torch.float32)
    q_full = scatter_draft_probs(q.to(torch.float32), draft_token_ids, vocab)
    draft = draft_ids.to(device=p.device, dtype=torch.long)
    valid = draft >= 0
    x = draft.clamp_min(0).unsqueeze(1)
    p_x = pf.gather(1, x).squeeze(1).double()
    q_x = q_full.gather(1, x).squeeze(1).double()

    u = _uniform(batch, p.device, generators) if uniform is None else uniform
    accepted = valid & (q_x > 0) & (p_x > 0) & (u * q_x <= p_x)   # p(x) = 0 (masked): never, even at u = 0

    residual = (pf - q_full).clamp_min_(0)
    mass = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > 1e-12, residual, pf)
    recovered = sample_from_probs(residual, generators, noise)
    return accepted, torch.where(accepted, draft, recovered)


def verify(
    target_logits: torch.Tensor,
    draft_ids: torch.Tensor,
    q: torch.Tensor,
    draft_token_ids: torch.Tensor,
    temperature,
    top_k=None,
    top_p=None,
    min_p=None,
    generators: dict[int, torch.Generator] | None = None,
    *,
    all_greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify one draft per row, greedy or sampled depending on the row.

    Rows with ``temperature < 1e-5`` use :func:`verify_greedy`, the others
    :func:`verify_sampled` with ``p = target_probs(target_logits, ...)``.
    ``target_logits`` should already carry any argmax-variant processing
    (penalties, bad words, logit bias, allowed ids), as in vLLM.

    ``all_greedy`` is a host-side hint (vLLM's ``SamplingMetadata.all_greedy``):
    when True the sort/softmax and the RNG draws are skipped entirely. Without
    it both paths run for every row and are merged with ``torch.where``
    (sampled draws are also consumed for greedy rows; vLLM never gives greedy
    requests a generator, so this does not affect seeded reproducibility).

    Returns ``(accepted [B] bool, token [B] int64)``; ``token`` is the draft when
    accepted and the corrected token otherwise.
    """
    g_acc, g_tok = verify_greedy(target_logits, draft_ids)
    if all_greedy:
        return g_acc, g_tok
    batch = target_logits.shape[0]
    temp = _rows(temperature, batch, torch.float32, target_logits.device)
    p = target_probs(target_logits, temp, top_k, top_p, min_p)
    s_acc, s_tok = verify_sampled(p, draft_ids, q, draft_token_ids, generators)
    greedy = greedy_mask(temp)
    return torch.where(greedy, g_acc, s_acc), torch.where(greedy, g_tok, s_tok)
