"""benchmarks/hybrid_choice.py's scoring: which lookup drafts count, and the choices' gains."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import hybrid_choice  # noqa: E402


def test_score_counts_verified_lookup_drafts_and_prices_choices():
    truths = {(1, 2): [1, 2, 3, 4, 5, 6]}
    events = [
        ([1, 2, 3], 4, 4, 0.9, 0.9),         # both right
        ([1, 2, 3, 4], 9, 5, 0.8, 0.01),     # the head right, lookup wrong
        ([1, 2, 3, 4, 5], 6, 7, 0.3, 0.2),   # lookup right, the head wrong
        ([1, 2, 3, 9], 9, 9, 0.5, 0.5),      # a wrong in-flight token: never verified, dropped
        ([1, 2, 3, 4, 5, 6], 1, 1, 0.5, 0.5),  # past the output's end: dropped
        ([7, 7], 1, 1, 0.5, 0.5),            # no such prompt: dropped
    ]
    out = hybrid_choice.score(events, truths, drafts=10)
    assert (out["events"], out["lookup_right"], out["head_right"], out["both"], out["neither"]) == (3, 2, 2, 1, 0)
    pol = out["policies"]
    assert pol["oracle"] == pytest.approx(0.1) and pol["head_always"] == pytest.approx(0.0)
    # Lookup where the head is unsure (max below 0.5): all three right.
    assert pol["head_max_below"]["0.5"] == pytest.approx(0.1)
    assert pol["head_max_below"]["0.05"] == pytest.approx(0.0)   # always the head
    assert pol["head_max_below"]["0.95"] == pytest.approx(0.0)   # always lookup
    # Lookup where the head gives its token at least 0.1: all right; at least 0.3: e3 goes wrong.
    assert pol["lookup_prob_at_least"]["0.1"] == pytest.approx(0.1)
    assert pol["lookup_prob_at_least"]["0.3"] == pytest.approx(0.0)
