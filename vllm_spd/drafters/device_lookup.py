"""Prompt lookup inside the device cycle: the n-gram drafter (``ngram.py``) on tensors.

Each row keeps its token history on the device: the committed tokens, copied in when a
step loads the whole batch, and the window's tokens, written at their positions every
cycle (so after a flush the corrected token replaces the dropped ones, and a step over
resident rows finds every position up to each row's newest token already there). A row's sequence is its
history up to the newest in-flight token, the same sequence the host cycle matches
(committed tokens, then the unverified in-flight ones). For each suffix length ``k``
from the longest down, every earlier start is compared at once; the most recent match
of the longest suffix proposes the token that followed it, as ``match_ngram`` does.
"""

from __future__ import annotations

import torch

from vllm_spd.core.cycle_state import CycleState


class DeviceLookup:
    def __init__(self, max_batch: int, max_len: int, device):
        #: the token at each position of each row (valid up to the row's newest token)
        self.history = torch.zeros(max_batch, max_len, dtype=torch.int64, device=device)

    def load(self, B: int, committed: torch.Tensor) -> None:
        """Rows' committed tokens ``[B, <= max_len]`` (host), when the batch is loaded."""
        self.history[:B, : committed.shape[1]].copy_(committed, non_blocking=True)

    def record(self, st: CycleState) -> None:
        """The window's tokens at their positions (every cycle, after the bookkeeping)."""
        W = st.tok.shape[1]
        j = torch.arange(W, device=st.tok.device)
        pos = (st.head[:, None] - j).clamp(0, self.history.shape[1] - 1)
        valid = j < st.wlen[:, None]
        cur = self.history[: st.tok.shape[0]].gather(1, pos)
        self.history[: st.tok.shape[0]].scatter_(1, pos, torch.where(valid, st.tok, cur))

    def match(self, st: CycleState, max_n: int, min_n: int):
        """``(token [P], matched suffix length [P], 0 where none)`` for the sequence
        ending at each row's newest token (``st.head``)."""
        P = st.head.shape[0]
        hist = self.history[:P]
        L = hist.shape[1]
        dev = hist.device
        head = st.head.clamp(0, L - 1)
        token = torch.zeros_like(head)
        found_len = torch.zeros_like(head)
        starts = torch.arange(L, device=dev)
        for k in range(max_n, min_n - 1, -1):
            span = L - k                       # starts s with s + k < L (the token after must exist)
            if span <= 0:
                continue
            hit = (starts[:span][None, :] <= (head - k)[:, None])
            for i in range(k):
                suffix = hist.gather(1, (head - k + 1 + i).clamp(min=0)[:, None])
                hit = hit & (hist[:, i:i + span] == suffix)
            last = torch.where(hit, starts[:span][None, :], torch.full_like(hit, -1, dtype=torch.int64)).amax(1)
            new = (last >= 0) & (found_len == 0)
            nxt = hist.gather(1, (last + k).clamp(0, L - 1)[:, None])[:, 0]
            token = torch.where(new, nxt, token)
            found_len = torch.where(new, torch.full_like(found_len, k), found_len)
        return token, found_len

    def propose(self, st: CycleState, max_n: int, min_n: int) -> torch.Tensor:
        """The n-gram drafter's proposal: the lookup, or the newest token repeated."""
        token, found = self.match(st, max_n, min_n)
        return torch.where(found > 0, token, st.tok[:, 0])
