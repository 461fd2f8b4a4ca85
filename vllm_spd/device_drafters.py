"""How the device cycle drafts: one small interface over the benchmark oracle, prompt
lookup, the draft module and their hybrid.

A :class:`DeviceDrafter` takes part in an engine step at four points:

- on the host, it takes each row's inputs (``load_row``) and moves them onto the device
  once per step (``load_done``); over resident rows (``DeviceCycle``: the same requests
  as the last step, their state left on the device) only what changes between steps;
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

    def load_row(self, b: int, req, state, head: int) -> None:
        """Row ``b``'s inputs on the host (``req``: SPD's request, ``state``: vLLM's,
        ``head``: the position of its newest in-flight token)."""

    def load_done(self, B: int, work, resident: bool) -> None:
        """The step's rows onto the device, after the cycle state is loaded;
        ``resident``: the rows are the last step's, with their device state kept."""

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
    ``priced`` the draft module also runs every cycle, its drafts unused, to price it."""

    def __init__(self, cycle, priced: bool):
        super().__init__(cycle)
        self.runs_module = priced
        P, dev = cycle.max_batch, cycle.hidden.device
        #: the proposals for positions ``base + k``: a flush moves the head back by up to
        #: n - 1, then drafts go at most one position further per cycle
        self.span = cycle.cycles_per_step + cycle.n
        self.tokens = torch.zeros(P, self.span, dtype=torch.int64, device=dev)
        self.base = torch.zeros(P, dtype=torch.int64, device=dev)
        self._rows: list = []

    def load_row(self, b, req, state, head):
        base = head + 1 - self.cycle.n
        proposer = self.cycle.runner.spd_drafter.proposer
        self._rows.append((proposer.proposals(state.prompt_token_ids, base, self.span), base))

    def load_done(self, B, work, resident):
        rows, self._rows = self._rows, []
        if rows:
            self.tokens[:B].copy_(torch.tensor([t for t, _ in rows]), non_blocking=True)
            self.base[:B].copy_(torch.tensor([b for _, b in rows]), non_blocking=True)

    def propose(self, part, live, warp):
        if self.runs_module:
            self._module_draft(part, live, warp)
        P = part.head.shape[0]
        k = (part.head + 1 - self.base[:P]).clamp(0, self.span - 1)
        return self.tokens[:P].gather(1, k[:, None])[:, 0]


class LookupDrafter(DeviceDrafter):
    """Prompt lookup (``device_lookup.py``): the most recent match of the longest suffix."""

    def __init__(self, cycle, lookup):
        super().__init__(cycle)
        self.lookup = lookup

    def load_done(self, B, work, resident):
        if resident:   # the history holds every position up to each row's newest token already
            return
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
        from vllm_spd.device_lookup import DeviceLookup

        lookup = DeviceLookup(cycle.max_batch, cycle.runner.max_model_len, cycle.hidden.device)
    return {"ngram": LookupDrafter(cycle, lookup) if lookup is not None else None,
            "head": HeadDrafter(cycle),
            "hybrid": HybridDrafter(cycle, lookup) if lookup is not None else None}
