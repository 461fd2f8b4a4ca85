"""Prompt lookup on tensors (``device_lookup.py``) against ``ngram.match_ngram``: random
sequences over a small vocabulary (many repeats), a window of in-flight tokens on top of
the committed history, every suffix-length range."""

import random

import pytest
import torch

from vllm_spd.core.cycle_state import CycleState
from vllm_spd.drafters.device_lookup import DeviceLookup
from vllm_spd.drafters.ngram import match_ngram, propose_ngram


@pytest.mark.parametrize("max_n, min_n", [(4, 1), (3, 2), (1, 1), (4, 3)])
def test_lookup_matches_host_lookup(max_n, min_n):
    rng = random.Random(max_n * 10 + min_n)
    B, L, n = 6, 64, 3
    for _ in range(30):
        seqs = [[rng.randrange(5) for _ in range(rng.randrange(1, L - 2))] for _ in range(B)]
        st = CycleState.allocate(B, n, 4)
        look = DeviceLookup(B, L, "cpu")
        committed = torch.zeros(B, L, dtype=torch.int64)
        for b, seq in enumerate(seqs):
            wlen = rng.randrange(1, min(n, len(seq)) + 1)      # the newest wlen tokens are in flight
            st.head[b], st.wlen[b] = len(seq) - 1, wlen
            st.tok[b, :wlen] = torch.tensor(seq[::-1][:wlen])
            cut = len(seq) - wlen + 1                          # committed: all but the unverified ones
            committed[b, :cut] = torch.tensor(seq[:cut])
            committed[b, cut:] = 99                            # stale tokens past the sequence
        look.load(B, committed)
        look.record(st)
        token, found = look.match(st, max_n, min_n)
        drafts = look.propose(st, max_n, min_n)
        for b, seq in enumerate(seqs):
            want = match_ngram(seq, max_n, min_n)
            got = None if int(found[b]) == 0 else (int(token[b]), int(found[b]))
            assert got == want, (seq, got, want)
            assert int(drafts[b]) == propose_ngram(seq, max_n, min_n)
