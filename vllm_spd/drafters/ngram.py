"""Prompt-lookup drafting: the drafter that needs no weights.

Used when no draft head is available. It proposes the token that followed the most
recent earlier occurrence of the sequence's longest matching suffix.
"""

from __future__ import annotations

from collections.abc import Sequence


def match_ngram(tokens: Sequence[int], max_n: int = 4, min_n: int = 1) -> tuple[int, int] | None:
    """``(next token, matched suffix length)`` by suffix matching, or None.

    >>> match_ngram([1, 2, 3, 4, 2, 3], max_n=3)
    (4, 2)
    >>> match_ngram([5, 6, 7]) is None
    True
    """
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = list(tokens[length - n:])
        # Scan right to left: the most recent match predicts best.
        for start in range(length - n - 1, -1, -1):
            if list(tokens[start:start + n]) == suffix:
                return int(tokens[start + n]), n
    return None


def propose_ngram(tokens: Sequence[int], max_n: int = 4, min_n: int = 1) -> int:
    """Next-token guess for ``tokens`` by suffix matching.

    >>> propose_ngram([1, 2, 3, 4, 2, 3], max_n=3)
    4
    >>> propose_ngram([5, 6, 7])      # no earlier match: repeat the last token
    7
    """
    found = match_ngram(tokens, max_n, min_n)
    return found[0] if found is not None else int(tokens[-1])
