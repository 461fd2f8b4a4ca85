"""How the device cycle drafts: one small interface over the benchmark oracle, prompt
lookup, the draft module and their hybrid.

A :class:`DeviceDrafter` takes part in an engine step at four points:

- on the host, it takes each row's inputs (``load_row``) and moves them onto the device
  (``load_done``) when a step loads the whole batch; a step over resident rows
  (``DeviceCycle``: the same requests as the last step, their state left on the device)
  loads nothing for it, as what it keeps on the device stays valid;
- in every cycle, before the stages run, it proposes each row's next draft (``propose``);
- after the cycle's commit it records what entered the window (``committed``);
- for a batch with sampled requests it tells verification which distribution each draft
  was drawn from (``proposal``): the draft module's q, or none for a deterministic
  proposal (q one-hot at the draft).

The draft module's anchor rings (``device_draft.DeviceDrafts``) are not a drafter's:
the stages write them whenever the module runs, and they are loaded and stored with the
rest of the rows' state.
Only the controller drafts; one drafter serves each ``drafting`` of
``DeviceCycle.drafting``.
"""

from __future__ import annotations

import torch


class DeviceDrafter:
    #: whether the draft module runs in its cycles (then the stages fill its anchor rings)
    runs_module = False

    def __init__(self, cycle):
        self.cycle = cycle

    def load_row(self, b: int, req, state) -> None:
        """Row ``b``'s inputs on the host (``req``: SPD's request, ``state``: vLLM's), when
        the step loads the whole batch."""

    def load_done(self, B: int, work) -> None:
        """The step's rows onto the device, after the cycle state is loaded."""

    def propose(self, part, live, warp) -> torch.Tensor:
        """Draft ids [P] for the position after each row's newest token."""
        raise NotImplementedError

    def committed(self, part, live) -> None:
        """After the cycle's commit."""

    def proposal(self, pos: torch.Tensor):
        """For sampled rows: ``(q, deterministic)``: q [P, K] over the draft vocabulary of
        each row's draft at ``pos`` (None: every draft deterministic), and a [P] mask of
        the drafts that were deterministic anyway (None: none)."""
        return None, None

    def _module_draft(self, part, live, warp):
        c = self.cycle
        P = part.head.shape[0]
        return c.drafts.draft(part, live, c.block_table, c.block_size,
                              None if warp is None else (warp, c.seed[:P]))


class OracleDrafter(DeviceDrafter):
    """The benchmark oracle: the recorded token, proposed with probability alpha. With
    ``priced`` the draft module also runs every cycle, its drafts unused, to price it.

    Its proposals are keyed on (request, position), so each request's are drawn once, for
    every position it can reach, and kept by position on the device: a step over
    resident rows loads nothing for it, and this instrument's host time does not stand
    in for SPD's."""

    def __init__(self, cycle, priced: bool):
        super().__init__(cycle)
        self.runs_module = priced
        P, dev = cycle.max_batch, cycle.hidden.device
        #: [P, max_model_len]: the proposal for each position of each row's request
        self.tokens = torch.zeros(P, cycle.runner.max_model_len, dtype=torch.int64, device=dev)
        #: req_id -> its proposals (host), drawn at its first load
        self._drawn: dict[str, torch.Tensor] = {}
        self._rows: list = []

    def load_row(self, b, req, state):
        got = self._drawn.get(req.req_id)
        if got is None:
            L = self.tokens.shape[1]
            prompt = state.prompt_token_ids
            end = min(L, len(prompt) + min(req.gate.max_tokens, L) + self.cycle.n + 1)
            drawn = self.cycle.runner.spd_drafter.proposer.proposals(prompt, len(prompt), end - len(prompt))
            got = self._drawn[req.req_id] = torch.tensor([0] * len(prompt) + drawn + [0] * (L - end))
        self._rows.append(got)

    def load_done(self, B, work):
        rows, self._rows = self._rows, []
        self.tokens[:B].copy_(torch.stack(rows), non_blocking=True)
        tracked = self.cycle.runner.spd_requests
        for req_id in [r for r in self._drawn if r not in tracked]:
            del self._drawn[req_id]

    def propose(self, part, live, warp):
        if self.runs_module:
            self._module_draft(part, live, warp)
        P = part.head.shape[0]
        at = (part.head + 1).clamp(0, self.tokens.shape[1] - 1)
        return self.tokens[:P].gather(1, at[:, None])[:, 0]


class LookupDrafter(DeviceDrafter):
    """Prompt lookup (``device_lookup.py``): the most recent match of the longest suffix."""

    def __init__(self, cycle, lookup):
        super().__init__(cycle)
        self.lookup = lookup

    def load_done(self, B, work):
        runner = self.cycle.runner
        idxs = [idx for idx, _, _ in work]
        width = max(int(runner.input_batch.num_tokens_no_spec[idx]) for idx in idxs)
        self.lookup.load(B, torch.from_numpy(runner.input_batch.token_ids_cpu[idxs, :width]))
        self.lookup.record(self.cycle.state.rows(B))

    def propose(self, part, live, warp):
        cfg = self.cycle.runner.spd_cfg
        return self.lookup.propose(part, cfg.ngram_max, cfg.ngram_min)

    def committed(self, part, live):
        self.lookup.record(part)


class HeadDrafter(DeviceDrafter):
    """The draft module (``device_draft.py``): greedy, or sampled with keyed draws."""

    runs_module = True

    def propose(self, part, live, warp):
        return self._module_draft(part, live, warp)

    def proposal(self, pos):
        return self.cycle.drafts.q_of(pos), None


class HybridDrafter(LookupDrafter):
    """The draft module, overridden by prompt lookup where it matches a long enough
    suffix, for requests cool enough (``hybrid_min_match``, ``hybrid_max_temperature``)."""

    runs_module = True

    def propose(self, part, live, warp):
        c = self.cycle
        cfg = c.runner.spd_cfg
        P = part.head.shape[0]
        proposed = self._module_draft(part, live, warp)
        looked, found = self.lookup.match(part, cfg.ngram_max, cfg.hybrid_min_match)
        use = (found > 0) & (c.temperature[:P] <= max(cfg.hybrid_max_temperature, 0.0))
        if warp is not None:
            c.drafts.mark_deterministic(part, live, use)
        return torch.where(use, looked, proposed)

    def proposal(self, pos):
        return self.cycle.drafts.q_of(pos), self.cycle.drafts.deterministic_at(pos)


def make_device_drafters(cycle) -> dict:
    """The controller's drafter for each ``drafting`` this deployment can take."""
    cfg = cycle.runner.spd_cfg
    if cfg.drafter == "oracle":
        return {"oracle": OracleDrafter(cycle, priced=False), "oracle+pdm": OracleDrafter(cycle, priced=True)}
    lookup = None
    if cfg.drafter in ("ngram", "hybrid"):
        from vllm_spd.drafters.device_lookup import DeviceLookup

        lookup = DeviceLookup(cycle.max_batch, cycle.runner.max_model_len, cycle.hidden.device)
    return {"ngram": LookupDrafter(cycle, lookup) if lookup is not None else None,
            "head": HeadDrafter(cycle),
            "hybrid": HybridDrafter(cycle, lookup) if lookup is not None else None}
