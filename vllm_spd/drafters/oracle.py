"""The oracle drafter: a benchmark instrument, not a way to serve.

It proposes the target's own greedy token, recorded beforehand by a plain run, with
probability ``alpha`` and a wrong token otherwise, so SPD's systems speed can be
measured at a chosen per-draft acceptance independently of any head's quality.
Verification still runs, so output stays exact. Recorded continuations live in a JSON
file mapping :func:`prompt_key` of the prompt token ids to the greedy output ids.
"""

from __future__ import annotations

import hashlib
import json


def prompt_key(prompt_token_ids) -> str:
    return hashlib.sha1(",".join(map(str, prompt_token_ids)).encode()).hexdigest()


def save_recording(path: str, prompts: list[list[int]], outputs: list[list[int]]) -> None:
    with open(path, "w") as f:
        json.dump({prompt_key(p): list(o) for p, o in zip(prompts, outputs)}, f)


class OracleDrafter:
    """``propose(prompt_ids, pos)`` -> recorded token at ``pos`` w.p. alpha, else a wrong one.

    >>> o = OracleDrafter({prompt_key([1, 2]): [7, 8, 9]}, alpha=1.0, vocab_size=10)
    >>> o.propose([1, 2], 3)      # position 3 = second output token
    8
    """

    def __init__(self, recording: dict, alpha: float, vocab_size: int, seed: int = 0):
        self.recording, self.alpha, self.vocab_size, self.seed = recording, alpha, vocab_size, seed

    @classmethod
    def from_file(cls, path: str, alpha: float, vocab_size: int) -> "OracleDrafter":
        with open(path) as f:
            return cls(json.load(f), alpha, vocab_size)

    def propose(self, prompt_ids, pos: int) -> int:
        return self.proposals(prompt_ids, pos, 1)[0]

    def proposals(self, prompt_ids, start: int, count: int) -> list[int]:
        """``propose(prompt_ids, pos)`` for ``count`` positions from ``start``, the prompt
        hashed once: the device cycle asks for a whole step's positions at a time, and
        this instrument's host time must not stand in for SPD's."""
        key = prompt_key(prompt_ids)
        recorded = self.recording.get(key, [])
        out = []
        for pos in range(start, start + count):
            i = pos - len(prompt_ids)
            truth = recorded[i] if 0 <= i < len(recorded) else 0
            out.append(truth if self._hit(key, pos) else (truth + 1) % self.vocab_size)
        return out

    def _hit(self, key: str, pos: int) -> bool:
        """Per (request, position) randomness: the same draft on every visit."""
        digest = hashlib.blake2b(f"{self.seed}:{key}:{pos}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") < self.alpha * 2.0**64
