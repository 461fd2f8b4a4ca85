"""The SPD cycle state machine of one request: pure Python, no vLLM, no tensors.

A request's *window* holds its in-flight tokens, newest first; the token at index i
has completed i stages (its *depth*). One cycle:

1. every in-flight token with depth < n is advanced by the stage at its depth;
2. the drafter proposes a token for the position after the newest one;
3. a token that reaches depth n *completes*: its final hidden state gives the target
   distribution for the next position, which *verifies* the token there (a draft);
4. accept -> that draft is *committed*; reject -> every newer in-flight token is
   dropped and the *corrected* token (sampled from the target) is committed and
   re-enters stage 0 alone.

Positions below ``committed_len`` are committed (verified, or target-sampled).
Worked example, n=2, first token t5 from prefill at position 5::

    cycle 1: window [5:t5 d0]          -> stage0(5); draft 6         -> [6:d6 d0, 5 d1]
    cycle 2: stage0(6), stage1(5): 5 completes, verifies d6: accept  -> commit d6
             draft 7 -> window [7:d7 d0, 6:d6 d1]
    cycle 3: stage0(7), stage1(6): 6 completes, verifies d7: reject -> commit y7,
             window [7:y7 d0]
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InFlight:
    pos: int
    token: int
    depth: int = 0


@dataclass
class CycleOutcome:
    committed: list[int] = field(default_factory=list)
    verified: bool = False   # a draft was checked this cycle
    accepted: bool = False


class RequestPipeline:
    """In-flight window of one request.

    >>> p = RequestPipeline(num_stages=2, token=11, pos=5)
    >>> [(s, e.pos) for s, e in p.stage_work()]
    [(0, 5)]
    >>> p.advance(draft=12)            # cycle 1: nothing completes
    >>> p.advance(draft=13)            # cycle 2: position 5 completes
    >>> p.completing().pos, p.candidate().token
    (5, 12)
    >>> p.resolve(accepted=True, token=12).committed
    [12]
    """

    def __init__(self, num_stages: int, token: int, pos: int):
        self.num_stages = num_stages
        self.window: list[InFlight] = [InFlight(pos, token, 0)]
        self.committed_len = pos + 1

    # -- what runs this cycle -------------------------------------------------
    def stage_work(self, pos_limit: int | None = None) -> list[tuple[int, InFlight]]:
        """``(stage, token)`` pairs to run this cycle: each token at depth d < n."""
        return [(e.depth, e) for e in self.window
                if e.depth < self.num_stages and (pos_limit is None or e.pos < pos_limit)]

    @property
    def newest(self) -> InFlight:
        return self.window[0]

    @property
    def draft_pos(self) -> int:
        return self.newest.pos + 1

    def unverified(self) -> list[InFlight]:
        return [e for e in self.window if e.pos >= self.committed_len]

    # -- after the stages ran -------------------------------------------------
    def advance(self, draft: int | None) -> None:
        """Every scheduled token went one stage deeper; the draft enters at depth 0."""
        for e in self.window:
            if e.depth < self.num_stages:
                e.depth += 1
        if draft is not None:
            self.window.insert(0, InFlight(self.draft_pos, draft, 0))

    def completing(self) -> InFlight | None:
        """The oldest token if it has been through every stage."""
        oldest = self.window[-1]
        return oldest if oldest.depth >= self.num_stages else None

    def candidate(self) -> InFlight | None:
        """The draft the completing token verifies (None: nothing was drafted there)."""
        done = self.completing()
        return None if done is None else self.successor(done)

    def successor(self, e: InFlight) -> InFlight | None:
        """The in-flight token right after ``e`` (the draft its verdict judges), if any."""
        for x in self.window:
            if x.pos == e.pos + 1:
                return x
        return None

    def resolve(self, accepted: bool, token: int) -> CycleOutcome:
        """Apply the verdict on the completing token's successor.

        ``token`` is the committed token: the draft itself when accepted, otherwise the
        corrected token sampled from the target distribution.
        """
        done = self.completing()
        assert done is not None, "resolve() without a completing token"
        cand = self.candidate()
        self.window.pop()
        target_pos = done.pos + 1
        self.committed_len = target_pos + 1
        if accepted:
            assert cand is not None and cand.token == token
            return CycleOutcome([token], verified=True, accepted=True)
        # Flush: drop every in-flight token newer than the completed one.
        self.window = [InFlight(target_pos, token, 0)]
        return CycleOutcome([token], verified=cand is not None, accepted=False)


class CommitGate:
    """Stops a request's commits exactly where vLLM's scheduler will stop it.

    The window may hold accepted-looking drafts past an EOS; nothing past a stop is
    emitted. The rule mirrors vLLM 0.32's ``check_stop``: a stop token (EOS unless
    ignore_eos, or a stop_token_id) or ``max_tokens`` ends the request. ``min_tokens``
    works the way vLLM's sampler does it: ``mask_ids`` (every EOS-like id) are masked
    out of the target distribution until ``min_tokens`` outputs exist, so a stop token
    cannot be committed before then.

    >>> g = CommitGate(stop_ids={2}, mask_ids={2}, min_tokens=0, max_tokens=10)
    >>> g.admit([5, 2, 7]), g.stopped
    ([5, 2], True)
    """

    def __init__(self, stop_ids, mask_ids, min_tokens: int, max_tokens: int, num_output: int = 0):
        self.stop_ids = frozenset(stop_ids)
        self.mask_ids = frozenset(mask_ids)
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self.num_output = num_output
        self.stopped = num_output >= max_tokens

    def admit(self, tokens: list[int]) -> list[int]:
        kept = []
        for token in tokens:
            if self.stopped:
                break
            kept.append(token)
            self.num_output += 1
            if token in self.stop_ids or self.num_output >= self.max_tokens:
                self.stopped = True
        return kept

    @property
    def masks_stop_tokens(self) -> bool:
        return self.num_output < self.min_tokens and bool(self.mask_ids)
