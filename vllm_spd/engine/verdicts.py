"""Verification glue between the runner and ``verify``: a request's sampling settings,
drafts checked against the target's logits, and verdicts read back from the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_spd.core import verify
from vllm_spd.engine.staged import to_device


@dataclass
class RequestSampling:
    """What verification and stopping need from a request's SamplingParams."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    generator: torch.Generator | None

    @classmethod
    def from_params(cls, sp, generator) -> "RequestSampling":
        return cls(float(sp.temperature), int(sp.top_k or 0), float(sp.top_p), float(sp.min_p), generator)

    @property
    def greedy(self) -> bool:
        return self.temperature < verify.SAMPLING_EPS


def row_params(samplings: list[RequestSampling], device) -> dict:
    """Per-row sampling settings as ``verify`` takes them (None = off for every row)."""
    def col(name, off):
        values = [getattr(s, name) for s in samplings]
        return None if all(v == off for v in values) else torch.tensor(values).to(device, non_blocking=True)

    gens = {i: s.generator for i, s in enumerate(samplings) if s.generator is not None}
    return dict(temperature=torch.tensor([s.temperature for s in samplings]).to(device, non_blocking=True),
                top_k=col("top_k", 0), top_p=col("top_p", 1.0), min_p=col("min_p", 0.0),
                generators=gens or None)


def sample_target(logits: torch.Tensor, samplings: list[RequestSampling]) -> torch.Tensor:
    """A token per row from the target distribution (argmax for greedy rows)."""
    if all(s.greedy for s in samplings):
        return logits.argmax(dim=-1)
    kw = row_params(samplings, logits.device)
    gens = kw.pop("generators")
    return verify.sample_from_probs(verify.target_probs(logits, **kw), gens)


def verify_drafts(logits, drafts: list[int], qs: list, samplings: list[RequestSampling],
                  draft_vocab: torch.Tensor | None):
    """Verify one draft per row; ``qs[r]`` is the sampled draft's q (None: deterministic
    proposal, i.e. q is one-hot at the draft). Draft -1 means nothing to verify."""
    device = logits.device
    draft_ids = to_device(drafts, device)
    if all(s.greedy for s in samplings):
        accepted, token = verify.verify_greedy(logits, draft_ids)
        return accepted & (draft_ids >= 0), token
    if draft_vocab is None:
        draft_vocab = torch.arange(logits.shape[-1], device=device)
    q = torch.zeros(len(drafts), draft_vocab.numel(), device=device)
    for r, (d, qr) in enumerate(zip(drafts, qs)):
        if qr is not None:
            q[r] = qr
        elif d >= 0:
            hit = torch.searchsorted(draft_vocab, torch.tensor([d], device=device))
            if hit < draft_vocab.numel() and draft_vocab[hit] == d:
                q[r, hit] = 1.0
    return verify.verify(logits, draft_ids, q, draft_vocab, **row_params(samplings, device))


class Verdicts:
    """Verdicts queued on the device (``[2, rows]``: accepted, token), read once: on a
    GPU copied to pinned host memory without waiting, the wait deferred to the first read.

    ``logprobs``: row -> ``(ids, logprobs, rank)`` (``target_rules.gather``) for the rows
    whose requests asked for logprobs."""

    def __init__(self, values: torch.Tensor, logprobs: dict | None = None):
        self._event = None
        self._logprobs = {row: tuple(_to_host(t) for t in got) for row, got in (logprobs or {}).items()}
        if values.is_cuda:
            values = _to_host(values)
            self._event = torch.cuda.Event()
            self._event.record()
        self._values = values
        self._rows = None

    def read_logprobs(self, row: int):
        """``(ids [k+1], logprobs [k+1], rank)`` of the token committed at ``row``, or None."""
        if row not in self._logprobs:
            return None
        if self._event is not None:
            self._event.synchronize()
        return self._logprobs[row]

    def read(self, row: int) -> tuple[bool, int]:
        if self._rows is None:
            if self._event is not None:
                self._event.synchronize()
            ok, tokens = self._values.tolist()
            self._rows = list(zip(ok, tokens))
        ok, token = self._rows[row]
        return bool(ok), int(token)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy in host memory, queued without waiting on a GPU (pinned)."""
    if not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)
