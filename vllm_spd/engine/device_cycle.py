"""The SPD cycle on the device: all stages in one worker, or each rank's stage on pipeline ranks.

One engine step launches up to ``cycles_per_step`` cycles back to back with no host work
between them, and reads the committed ring once at the end (one worker in the engine
core's process ends a step early when input waits for the engine core, see
``arrivals.py``). The batch's windows
(with each in-flight token's hidden state by depth, its anchors) are loaded into a
:class:`CycleState` when the batch changes; while the same requests decode step after
step in the same rows, their state stays *resident* on the device, and a step loads only
its limits (budget, KV room, block table). Resident rows are stored back into the
host-side state (:meth:`DeviceCycle.flush`) before anything else reads it: a step over
other rows, the host-driven cycle, a capture. A cycle is a fixed-shape program:

- each stage, last first, runs its layer slice on the token of its depth in every row
  (the hops are device-to-device copies between depth slots); a row with nothing at
  that depth still flows, with KV slot -1, so it writes nothing;
- positions, sequence lengths and KV slots are computed from the state on the device
  (slot -1 past a request's allocated blocks) into persistent buffers, and the
  attention metadata over those buffers is built once per batch size with fixed upper
  bounds (``max_seq_len = max_model_len``; FlashAttention 3 schedules inside its own
  launch, no host-built scheduler metadata);
- the completing tokens' final rows go through the LM head; the argmax (stop ids
  masked until ``min_tokens``) verifies the drafts; :meth:`CycleState.advance` does the
  rest;
- the drafter (``device_drafters.py``: the oracle, prompt lookup, the draft module or
  their hybrid) proposes before the stages run; the draft module (``device_draft.py``)
  drafts from the anchors, greedily or, for sampled requests, by sampling with draws
  keyed on (seed, position) (``keyed_random.py``); sampled requests are verified by
  rejection sampling with keyed draws too.

On a GPU one CUDA graph per padded batch size (and drafting/sampling mode) holds a whole
cycle, or ``VLLM_SPD_CYCLES_PER_GRAPH`` of them back to back, captured after vLLM's
graphs, with each stage's slice of layers compiled by Inductor (``stage_compile.py``);
on CPU the same program runs eagerly (metadata rebuilt by the CPU backend's builder every
stage), which is what the CPU tests check against plain vLLM.

On pipeline ranks each rank runs its own stage. A cycle there is its compute (the
controller also drafts and verifies), the *hop* (the controller's drafts and verdicts
broadcast to every rank, each stage's rows to the next, anchors to the controller, all
on the data group) and what the hop brought (each rank advances its copy of the state
with the verdicts). On a GPU the compute and that last part are two CUDA graphs per
padded batch and mode, and the hop runs eagerly between their launches: NCCL orders
it on the stream, so the host never waits, and NCCL is not inside the graphs.

Serves ``verdict_lag`` 0, in one worker and across pipeline ranks, with every drafter
(the draft module, prompt lookup in ``device_lookup.py``, their hybrid, the benchmark
oracle), greedy and sampled requests alike; ``verdict_lag`` 1 takes the host-driven
cycle in ``runner.py``. Both work on the same per-request state (``RequestPipeline``, each token's carried hidden
state, anchors and draft proposals), so a request can move between them at any step.
Seeded requests draw differently in the two (keyed draws here, the request's generator
there); each is exact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from vllm_spd import envs
from vllm_spd.core.cycle_state import STEP_FIELDS, CycleState
from vllm_spd.engine import arrivals
from vllm_spd.core.stage_plan import StagePlan, plan_stages

logger = logging.getLogger("vllm_spd")

#: Stop token ids a row's gate holds on the device; a request with more takes the host cycle.
STOP_SLOTS = 16
#: Padded batch sizes with a captured cycle graph; larger batches take the host cycle.
GRAPH_BATCHES = (1, 2, 4, 8, 16)
#: Launches the host keeps queued on the GPU while it watches for input mid-step.
LAUNCHES_AHEAD = 2
#: What ``set_timing`` collects: per launch its host time and its cycles; per step its
#: host time, the load's share of it, the load's phases (``LOAD_PHASES``) and its launches.
TIMING_SAMPLES = ("launch_us", "launch_cycles", "step_host_us", "step_load_us", "load_phases_us", "step_launches",
                  "step_resident")
#: The load's phases, in order: the rows built on the host (each drafter's too), the cycle
#: state's copies, the draft module's anchors, the carried hidden states, the block table,
#: the drafter's copies (a step over resident rows skips the draft module's and the
#: carried hidden states', and the block table's while no row gained a block).
LOAD_PHASES = ("rows", "state", "draft_module", "carried", "block_table", "drafter")


class DeviceCycle:
    def __init__(self, runner):
        self.runner = runner
        lay = runner.spd_layout
        cfg = runner.spd_cfg
        self.n = lay.num_stages
        self.cycles_per_step = cfg.cycles_per_step
        #: pipeline ranks: this rank's link, its stage and whether it is the controller
        #: (which drafts and verifies); one worker: no link, every stage, the controller
        self.link = runner.spd_link
        #: cycles one launch runs (one graph holds them); a step's cycles past its whole
        #: launches run one per launch
        self.per_launch = self._launch_size(envs.cycles_per_graph())
        self.on_gpu = runner.device.type == "cuda"
        self.here = runner._spd_stages_here()
        self.controller = runner.spd_is_controller
        max_seqs = runner.scheduler_config.max_num_seqs
        self.sizes = sorted({min(b, max_seqs) for b in GRAPH_BATCHES})
        self.max_batch = self.sizes[-1] if self.on_gpu else max_seqs
        P, dev = self.max_batch, runner.device
        self.state = CycleState.allocate(P, self.n, self.cycles_per_step, stop_slots=STOP_SLOTS,
                                         mask_slots=STOP_SLOTS, device=dev)
        H = runner.spd_hidden_size
        #: [depth, row, H]: the hidden state (and residual) of each row's token of that depth
        self.hidden = torch.zeros(self.n + 1, P, H, dtype=runner.spd_dtype, device=dev)
        self.residual = torch.zeros_like(self.hidden)
        blocks = runner.input_batch.block_table[0].get_cpu_tensor().shape[1]
        self.block_size = runner.cache_config.block_size
        self.block_table = torch.zeros(P, blocks, dtype=torch.int32, device=dev)
        #: host staging (pinned on a GPU, so a copy neither waits for the device nor
        #: stages through pageable memory) of what every step loads: the cycle state's
        #: per-step block and the block table's rows
        pin = self.on_gpu
        self._step_host = torch.zeros(len(STEP_FIELDS), P, dtype=torch.int64, pin_memory=pin)
        self._table_host = torch.zeros(P, blocks, dtype=torch.int32, pin_memory=pin)
        self.query_start_loc = torch.arange(P + 1, dtype=torch.int32, device=dev)
        #: what each stage runs every cycle, and its attention rows (one fused launch per cycle)
        self.plan = StagePlan.allocate(self.n, P, dev)
        #: FlashAttention 3's scheduler metadata planned once per stage and cycle, not per layer
        self.schedule_once = self.on_gpu
        #: the draft module's anchor rings, where it is loaded (the controller)
        self.drafts = None
        if runner.spd_pdm is not None:
            from vllm_spd.drafters.device_draft import DeviceDrafts

            self.drafts = DeviceDrafts(runner, P)
        #: the stage slices (and the draft module's layers) compiled by Inductor where the
        #: cycle's graphs are captured (``capture``), fused as vLLM's own forward; eager
        #: elsewhere unless asked for (``self.compiled``)
        self._compile(envs.stage_compile(None))
        #: per row: temperature, top_k, top_p, min_p and the key of its random draws
        self.temperature = torch.zeros(P, dtype=torch.float32, device=dev)
        self.top_k = torch.zeros(P, dtype=torch.int64, device=dev)
        self.top_p = torch.ones(P, dtype=torch.float32, device=dev)
        self.min_p = torch.zeros(P, dtype=torch.float32, device=dev)
        self.seed = torch.zeros(P, dtype=torch.int64, device=dev)
        #: pipeline ranks: each cycle's (draft, resolved target) per row, from the controller
        self.verdict = torch.zeros(P, 2, dtype=torch.int64, device=dev)
        #: pipeline ranks: padded batch -> the hop's buffers (``_hop_buffers``)
        self._hops: dict[int, Hop] = {}
        #: the controller's drafter for each ``drafting`` (``device_drafters.py``)
        self.drafters = {}
        if self.controller:
            from vllm_spd.drafters.device_drafters import make_device_drafters

            self.drafters = make_device_drafters(self)
        #: (padded batch, mode) -> {cycles: the graph of that many cycles}, for ``per_launch`` and 1
        self.graphs: dict[tuple[int, tuple], dict[int, torch.cuda.CUDAGraph]] = {}
        #: (padded batch, stage) -> that stage's attention metadata, slot mappings and schedule
        self.meta: dict[tuple[int, int], tuple[dict, dict, list]] = {}
        self.steps = 0
        #: the rows whose state stayed on the device after the last step (None: none)
        self._resident: Resident | None = None
        #: steps that found their rows resident (loaded only their limits)
        self.resident_steps = 0
        #: cycles launched over all steps
        self.cycles_run = 0
        #: steps ended early because input waited for the engine core (``arrivals.py``)
        self.steps_cut = 0
        #: with ``timing`` on (``set_timing``): launch time and CUDA events per cycle, host time per step
        self.timing = False
        self.samples: dict[str, list[float]] = {key: [] for key in TIMING_SAMPLES}
        if self.link is not None:
            logger.info("spd: the device cycle runs stage %d of %d on this rank (%s)", self.link.stage,
                        self.n, "the controller" if self.controller else "rows to the next stage")

    # -- which steps it serves ---------------------------------------------------------
    def serves(self, reqs) -> bool:
        """Whether this step runs here. Pipeline ranks decide from replicated state only
        (the same on every rank), or some would run the device cycle and others the host
        cycle, and all would wait for each other forever."""
        r = self.runner
        return (r.spd_cfg.verdict_lag == 0 and self.drafting() is not None
                and len(reqs) <= self.max_batch and all(q.early is None and q.rules is None for q in reqs)
                and all(len(q.gate.stop_ids) <= STOP_SLOTS and len(q.gate.mask_ids) <= STOP_SLOTS for q in reqs))

    def drafting(self) -> str | None:
        """How this step drafts: ``oracle``, ``oracle+pdm`` (the oracle proposes, the draft
        module runs unused, to price it), ``head`` (the draft module proposes), ``ngram``
        (prompt lookup), ``hybrid`` (the head, overridden by prompt lookup); None: a
        drafter this deployment cannot run here."""
        r = self.runner
        drafter = r.spd_cfg.drafter
        head = r.spd_cfg.model is not None      # the controller has it loaded (spd_pdm)
        if drafter == "oracle":
            return "oracle+pdm" if head and r.spd_price_pdm else "oracle"
        if drafter in ("head", "hybrid") and head:
            return drafter
        if drafter == "ngram":
            return "ngram"
        return None

    def mode(self, reqs=()) -> tuple:
        """What a cycle's graph does: the drafting, and for a batch with sampled requests
        which of top-k, top-p and min-p any of them uses (all greedy: ``()``)."""
        sampled = [q.sampling for q in reqs if not q.sampling.greedy]
        warps = () if not sampled else ("sampled", *[name for name, off in (("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))
                                                       if any(getattr(x, name) != off for x in sampled)])
        return (self.drafting(), *warps)

    def padded(self, b: int) -> int:
        """Rows a step runs on: the smallest captured batch size that holds ``b``."""
        return next(s for s in self.sizes if s >= b) if self.graphs else b

    # -- one engine step -----------------------------------------------------------------
    def run_step(self, work, stats) -> dict[str, list[int]]:
        from vllm_spd.engine.runner import StepStats

        runner = self.runner
        reqs = [runner.spd_requests[req_id] for _, req_id, _ in work]
        B = len(reqs)
        P = self.padded(B)
        mode = self.mode(reqs)
        res = self._resident
        resident = res is not None and res.holds(reqs, P, mode)
        if not resident:
            self.flush()
        graphs = self.graphs.get((P, mode))
        if graphs is None and self.graphs:
            # Captured for another mode (drafting, sampling): capture this one first, as
            # its warm-up run overwrites the carried hidden states that the load writes.
            graphs = self._capture(P, mode)
        t0 = time.perf_counter()
        if self.link is not None:
            self.link.wait_sends()   # prefill's rows, sent before this step
        drafter = self.drafters.get(mode[0])
        if resident:
            cycles, blocks = self._reload(work, reqs, res)
            self.resident_steps += 1
        else:
            cycles, blocks = self._load(work, reqs, P, drafter)
        host = time.perf_counter() - t0
        timed = self.timing and graphs is not None
        whole, rest = divmod(cycles, self.per_launch)
        launches = [self.per_launch] * whole + [1] * rest
        # One worker: input waiting for the engine core (a new request, an abort) ends the
        # step early; the host then keeps at most LAUNCHES_AHEAD launches queued, so that
        # it looks while the cycles run, not all at the step's start. Pipeline ranks run
        # whole steps (every rank must run the same cycles).
        watch = self.link is None and arrivals.watching()
        marks, ran = [], 0
        for i, c in enumerate(launches):
            if watch and i:
                if len(marks) >= LAUNCHES_AHEAD:
                    marks[-LAUNCHES_AHEAD].synchronize()
                if arrivals.pending():
                    self.steps_cut += 1
                    break
            if timed:
                self._timed_launch(graphs[c], c)
            elif graphs is not None:
                graphs[c].replay()
            else:
                for _ in range(c):
                    self._cycle(P, mode)
            ran += c
            if watch and self.on_gpu:
                marks.append(torch.cuda.Event())
                marks[-1].record()
        self.cycles_run += ran
        st = self.state
        out = torch.cat([st.tok[:B], st.depth[:B], st.ring[:B],
                         torch.stack([st.head, st.wlen, st.committed_len, st.ring_len, st.cycles, st.verified,
                                      st.accepted, st.pending], 1)[:B]], 1)
        out = out.cpu()               # the step's one read: waits for the device
        t0 = time.perf_counter()      # host time from here on is the step's read-back
        res = Resident(reqs, P, mode, [Row.parse(r, self.n + 1, self.cycles_per_step) for r in out.tolist()],
                       blocks)
        committed = {}
        for (idx, req_id, _), req, row in zip(work, reqs, res.rows):
            kept = runner._spd_commit(idx, req, row.ring[:row.ring_len])
            if len(kept) != row.ring_len:
                raise RuntimeError(f"spd: the device gate committed {row.ring_len} tokens for request {req_id}, "
                                   f"the host gate {len(kept)}")
            committed[req_id] = kept
            stats[req_id] = StepStats(row.cycles, row.verified, row.accepted, row.ring_len)
        # The rows' windows, hidden states and anchors stay on the device until ``flush``.
        self._resident = res
        self.steps += 1
        if timed:
            self.samples["step_host_us"].append(1e6 * (host + time.perf_counter() - t0))
            self.samples["step_load_us"].append(1e6 * host)
            self.samples["step_launches"].append(len(launches))
            self.samples["step_resident"].append(int(resident))
            self.samples["load_phases_us"].append(self._phases)
        return committed

    def flush(self) -> None:
        """Store the resident rows' state (windows, carried hidden states, anchors,
        sampled drafts' proposals) back into their requests' host-side state, which is
        the reference again from here on. A request that finished or was preempted
        since is skipped."""
        res, self._resident = self._resident, None
        if res is None:
            return
        B = len(res.reqs)
        snap = torch.stack([self.hidden[:, :B], self.residual[:, :B]]).clone()
        anchors = qs = det = None
        if self.drafts is not None:
            anchors = self.drafts.anchors[:, : B * self.drafts.ring].clone()
            if len(res.mode) > 1:
                qs = self.drafts.proposals[: B * self.drafts.ring].clone()
                det = self.drafts.deterministic[: B * self.drafts.ring].tolist()
        tracked = self.runner.spd_requests
        for b, (req, row) in enumerate(zip(res.reqs, res.rows)):
            if tracked.get(req.req_id) is not req:
                continue
            self._store(req, snap, b, row)
            if anchors is not None:
                self.drafts.store(req, b, anchors, bool(row.pending), qs if not req.sampling.greedy else None, det)

    def _step_limits(self, idx: int, req_id: str, num_sched: int, req,
                     oldest_depth: int) -> tuple[int, int, int, int]:
        """A row's ``(limit, budget, cycles, blocks)`` this step: the first position
        without a KV slot, the most tokens it may commit, the cycles it takes to commit
        them with every draft accepted (the oldest in-flight token's remaining stages,
        then one commit a cycle; 0 when it commits nothing), and its KV blocks."""
        runner = self.runner
        blocks = len(runner.requests[req_id].block_ids[0])
        limit = min(runner.max_model_len, blocks * self.block_size)
        room = runner.max_model_len - int(runner.input_batch.num_tokens_no_spec[idx])
        g = req.gate
        budget = min(num_sched, max(room, 0))
        commits = 0 if g.stopped else min(budget, g.max_tokens - g.num_output)
        cycles = max(1, self.n - oldest_depth) + commits - 1 if commits > 0 else 0
        return limit, budget, cycles, blocks

    def _load_block_table(self, work, P: int) -> None:
        """The rows' block tables (padding rows: zeros), through the pinned stage."""
        B = len(work)
        stage = self._table_host[:P]
        rows = torch.tensor([idx for idx, _, _ in work], dtype=torch.int64)
        torch.index_select(self.runner.input_batch.block_table[0].get_cpu_tensor(), 0, rows, out=stage[:B])
        stage[B:].zero_()
        self.block_table[:P].copy_(stage, non_blocking=True)

    def _load_step(self, limits: list[int], budgets: list[int]) -> None:
        """The cycle state's per-step block in one copy: each row's ``limit`` and
        ``budget``, the step's counters zeroed (padding rows: all zero)."""
        host = self._step_host.numpy()
        host.fill(0)
        B = len(limits)
        host[STEP_FIELDS.index("limit"), :B] = limits
        host[STEP_FIELDS.index("budget"), :B] = budgets
        self.state.step_block.copy_(self._step_host, non_blocking=True)

    def _reload(self, work, reqs, res: "Resident") -> tuple[int, list[int]]:
        """A step over the resident rows: only what changes between steps, each row's
        limit and budget and the step's counters in one copy, and the block table where
        a row gained a block; nothing for the drafter, whose device state (the oracle's
        proposals, prompt lookup's history) stays with the rows. Returns the cycles to
        launch and the rows' block counts."""
        marks = [time.perf_counter()]
        limits, budgets, blocks, cycles = [], [], [], 0
        for (idx, req_id, num_sched), req, row in zip(work, reqs, res.rows):
            limit, budget, c, nb = self._step_limits(idx, req_id, num_sched, req, max(row.depth[:row.wlen]))
            limits.append(limit)
            budgets.append(budget)
            blocks.append(nb)
            cycles = max(cycles, c)
        marks.append(time.perf_counter())
        self._load_step(limits, budgets)
        marks += [time.perf_counter()] * 3
        if blocks != res.blocks:
            self._load_block_table(work, res.P)
        marks += [time.perf_counter()] * 2
        self._phases = [1e6 * (b - a) for a, b in zip(marks, marks[1:])]
        return min(self.cycles_per_step, cycles), blocks

    def _load(self, work, reqs, P, drafter) -> tuple[int, list[int]]:
        """The batch's windows, gates, step limits and carried hidden states into the
        state; returns how many cycles to launch and the rows' block counts."""
        runner = self.runner
        st, n, W = self.state, self.n, self.n + 1
        S, M = st.stop_ids.shape[1], st.mask_ids.shape[1]
        rows = []
        hid, res, at = [], [], []
        anchor_rows, q_rows, pending, sampling = [], [], [], []
        limits, budgets, blocks, cycles = [], [], [], 0
        marks = [time.perf_counter()]
        for b, ((idx, req_id, num_sched), req) in enumerate(zip(work, reqs)):
            win = req.pipe.window
            if len(win) > W:
                raise RuntimeError(f"spd: request {req_id} holds {len(win)} in-flight tokens, more than {W}")
            state = runner.requests[req_id]
            stop = sorted(req.gate.stop_ids)      # at most STOP_SLOTS each (``serves``)
            mask = sorted(req.gate.mask_ids)
            g = req.gate
            limit, budget, c, nb = self._step_limits(idx, req_id, num_sched, req, max(e.depth for e in win))
            blocks.append(nb)
            cycles = max(cycles, c)
            rows.append([e.token for e in win] + [0] * (W - len(win))
                        + [e.depth for e in win] + [0] * (W - len(win))
                        + stop + [-1] * (S - len(stop))
                        + (mask + [mask[0]] * (M - len(mask)) if mask else [0] * M)
                        + [win[0].pos, len(win), req.pipe.committed_len, g.min_tokens, min(g.max_tokens, 1 << 62),
                           g.num_output, int(g.stopped)])
            for e in win:
                if 1 <= e.depth <= n and e.pos in req.carry:
                    h, r = req.carry[e.pos]
                    hid.append(h)
                    res.append(r)
                    at.append((b, e.depth))
            if self.drafts is not None:
                self.drafts.load(b, req, anchor_rows, q_rows)
            sampling.append((req.sampling.temperature, req.sampling.top_k, req.sampling.top_p, req.sampling.min_p,
                             req.seed))
            if req.pending is not None and req.pending != win[-1].pos - 1:
                raise RuntimeError(f"spd: request {req_id}'s pending draft row {req.pending} is not just before "
                                   f"its window ({win[-1].pos})")
            pending.append(int(req.pending is not None))
            limits.append(limit)
            budgets.append(budget)
            if drafter is not None:
                drafter.load_row(b, req, state)
        dev = self.hidden.device
        B = len(reqs)
        marks.append(time.perf_counter())
        host = torch.tensor(rows, dtype=torch.int64)
        ints, o = [], 0   # (destination, host values) of every int64 the step loads
        for name, width in (("tok", W), ("depth", W), ("stop_ids", S), ("mask_ids", M)):
            ints.append((getattr(st, name)[:B], host[:, o:o + width]))
            o += width
        for name in ("head", "wlen", "committed_len", "min_tokens", "max_tokens", "num_output", "stopped"):
            ints.append((getattr(st, name)[:B], host[:, o]))
            o += 1
        temp, top_k, top_p, min_p, seed = zip(*sampling)
        ints += [(st.pending[:B], torch.tensor(pending, dtype=torch.int64)),
                 (self.top_k[:B], torch.tensor(top_k, dtype=torch.int64)),
                 (self.seed[:B], torch.tensor(seed, dtype=torch.int64))]
        real = torch.zeros(st.real.shape[0], dtype=torch.int64)
        real[:B] = 1
        ints.append((st.real, real))
        if P > B:   # padding rows: stopped
            ints.append((st.stopped[B:P], torch.ones(P - B, dtype=torch.int64)))
        load_packed(ints)
        load_packed([(self.temperature[:B], torch.tensor(temp, dtype=torch.float32)),
                     (self.top_p[:B], torch.tensor(top_p, dtype=torch.float32)),
                     (self.min_p[:B], torch.tensor(min_p, dtype=torch.float32))])
        self._load_step(limits, budgets)
        marks.append(time.perf_counter())
        if self.drafts is not None:
            self.drafts.load_done(anchor_rows, q_rows, st, B, runner._spd_embed)
        marks.append(time.perf_counter())
        if at:
            ix = torch.tensor(at, dtype=torch.int64).to(dev, non_blocking=True)
            self.hidden[ix[:, 1], ix[:, 0]] = torch.stack(hid).to(self.hidden.dtype)
            self.residual[ix[:, 1], ix[:, 0]] = torch.stack(res).to(self.residual.dtype)
        marks.append(time.perf_counter())
        self._load_block_table(work, P)
        marks.append(time.perf_counter())
        if drafter is not None:
            drafter.load_done(B, work)
        marks.append(time.perf_counter())
        self._phases = [1e6 * (b - a) for a, b in zip(marks, marks[1:])]
        # Cycles to launch: as many as the row that needs most takes to commit its share
        # of the step with every draft accepted, so none is launched after the last
        # commit a request can make (at a request's end n of them were, each a whole
        # cycle of GPU work); a row short of its budget after a rejection goes on next step.
        return min(self.cycles_per_step, cycles), blocks

    def _store(self, req, snap, b, row: "Row") -> None:
        """The row's window and carried hidden states back into the request's state."""
        from vllm_spd.core.pipeline import InFlight

        req.pipe.window = [InFlight(row.head - j, row.tok[j], row.depth[j]) for j in range(row.wlen)]
        req.pipe.committed_len = row.committed_len
        req.carry = {e.pos: (snap[0, e.depth, b], snap[1, e.depth, b])
                     for e in req.pipe.window if 1 <= e.depth <= self.n}
        req.anchors.clear()
        req.draft_q.clear()

    # -- one cycle (what a graph holds) ----------------------------------------------------
    def _cycle(self, P: int, mode: tuple) -> None:
        """One whole cycle: on one worker its compute; on a pipeline rank its compute, the
        hop between ranks, then what the hop brought (:class:`HopGraphs` replays the same
        three parts, the hop eagerly between two graphs)."""
        hop = self._compute(P, mode)
        if hop is not None:
            self._communicate(P, hop)
            self._absorb(P, hop)

    def _compute(self, P: int, mode: tuple) -> "Hop | None":
        """A cycle up to the hop: drafting, the stages here, and on the controller the
        verdicts; on a pipeline rank returns what the hop sends and receives."""
        runner = self.runner
        model = runner.get_model()
        tm = model.model
        part = self.state.rows(P)
        live = part.live()
        ctrl = self.controller
        drafting, sampled = mode[0], len(mode) > 1
        warp = self._warp(P, mode) if sampled and ctrl else None
        drafter = self.drafters.get(drafting)   # the controller's
        # the draft module's anchor rings, where it runs this cycle
        drafts = self.drafts if drafter is not None and drafter.runs_module else None
        if drafter is not None:   # from the anchors before this cycle's stages, as the host cycle drafts
            draft = drafter.propose(part, live, warp)
        plan = self.plan.rows(P)
        plan_stages(part, live, self.block_table[:P], self.block_size, plan)
        # pipeline ranks: what every stage runs this cycle, for the anchors that arrive after it
        started = {s: plan.stage(s) for s in range(self.n)} if self.link is not None and ctrl else None
        caught_here = {}
        for s in reversed(self.here):
            runs, tok, pos = plan.stage(s)
            if s == 0:
                hidden, residual = tm.embed_input_ids(tok), None
            else:   # copies: the first layer's norm works in place (vLLM's CUDA kernel), and a
                # row that sits the cycle out keeps its token's hidden state at this depth
                hidden, residual = self.hidden[s, :P].clone(), self.residual[s, :P].clone()
            if drafts is not None:
                capture = {k for _, k in drafts.stage_anchors[s]}
            else:   # a pipeline rank sends the controller the anchors of its stage (none from the controller)
                capture = set(runner._spd_stage_anchor_ids(s)) if not ctrl else set()
            hidden, residual, caught = self._run_layers(tm, s, P, hidden, residual, capture)
            if drafts is not None:
                drafts.stage_done(s, caught, pos, runs)
            caught_here = caught
            # A row that sits out the cycle (stopped, or out of this step's budget) keeps
            # its in-flight hidden states for the next step.
            keep = live[:, None]
            torch.where(keep, hidden, self.hidden[s + 1, :P], out=self.hidden[s + 1, :P])
            torch.where(keep, residual, self.residual[s + 1, :P], out=self.residual[s + 1, :P])
        if ctrl:
            normed, _ = tm.norm(self.hidden[self.n, :P], self.residual[self.n, :P])
            logits = model.compute_logits(normed)
            part.mask_min_tokens(logits)
            target = logits.argmax(dim=-1) if warp is None else self._sampled_target(P, logits, warp, drafter)
            if self.link is not None and callable(target):   # the other ranks take the resolved tokens
                judge = target

                def target(cand, pos):
                    self.verdict[:P, 1] = judge(cand, pos)
                    return self.verdict[:P, 1]
            part.advance(live, draft, target)
            if self.link is not None:
                self.verdict[:P, 0] = draft
                if not callable(target):
                    self.verdict[:P, 1] = target
            if drafts is not None:
                drafts.entered(part, live, runner._spd_embed)
            drafter.committed(part, live)
        if self.link is None:
            return None
        s = self.link.stage
        outbound = [] if ctrl else \
            runner._spd_outbound(s, self.hidden[s + 1, :P], self.residual[s + 1, :P], caught_here)
        hop = self._hop_buffers(P, outbound)
        hop.live.copy_(live)
        for (buf, _, _), (out, _, _) in zip(hop.sends, outbound):
            buf.copy_(out)
        hop.started = started
        return hop

    def _hop_buffers(self, P: int, outbound: list) -> "Hop":
        """The hop's buffers for ``P`` rows, shaped after this cycle's ``outbound``
        messages and the rank's inbound ones, allocated on first use (a warm-up, never
        inside a capture) and kept: a rank's captured graphs write the sends and read
        the receives at fixed addresses, and the hop between them uses the same ones."""
        hop = self._hops.get(P)
        if hop is None:
            H, dev = self.runner.spd_hidden_size, self.hidden.device
            sends = [(torch.zeros_like(out), stage, tag) for out, stage, tag in outbound]
            # what the host-driven cycle receives per cycle, the same messages
            recvs = [(torch.zeros(2 * carries + len(ks), P, H, dtype=self.hidden.dtype, device=dev),
                      src, tag, ks, carries) for src, tag, ks, carries in self.runner.spd_inbound]
            hop = self._hops[P] = Hop(torch.zeros(P, dtype=torch.bool, device=dev), sends, recvs)
        return hop

    def _communicate(self, P: int, hop: "Hop") -> None:
        """The hop between pipeline ranks: the controller's (draft, resolved target) of
        every row to every rank, then each stage's rows to the next stage and its
        anchors to the controller (with the rows when the next stage is the controller).
        All of it on the data group: on NCCL the stream waits for it, the host does not."""
        self.link.broadcast_from_controller(self.verdict[:P])
        self.link.exchange(hop.sends, [(buf, src, tag) for buf, src, tag, _, _ in hop.recvs])

    def _absorb(self, P: int, hop: "Hop") -> None:
        """After the hop: a rank other than the controller advances its copy of the state
        with the controller's verdicts (so every rank knows what each stage runs, with no
        host in between); the rows of the stage before go where this rank's stage runs
        them next cycle, and on the controller the anchors into the draft module's rings."""
        s = self.link.stage
        verdict = self.verdict[:P]
        if not self.controller:
            self.state.rows(P).advance(hop.live, verdict[:, 0].clone(), verdict[:, 1].clone())
        keep = hop.live[:, None]
        for buf, src, _, ks, carries in hop.recvs:
            if carries:   # the rows of the stage before: this rank's stage runs them next cycle
                self.hidden[s, :P].copy_(torch.where(keep, buf[0], self.hidden[s, :P]))
                self.residual[s, :P].copy_(torch.where(keep, buf[1], self.residual[s, :P]))
            if ks and self.drafts is not None:
                runs, _, pos = hop.started[src]
                self.drafts.stage_done(src, {k: buf[2 * carries + i] for i, k in enumerate(ks)}, pos, runs)

    def _warp(self, P: int, mode: tuple) -> dict:
        """The rows' sampling settings as ``verify`` takes them; a warp no request uses is
        left out (None), as vLLM's sampler skips it."""
        return dict(temperature=self.temperature[:P], top_k=self.top_k[:P] if "top_k" in mode else None,
                    top_p=self.top_p[:P] if "top_p" in mode else None,
                    min_p=self.min_p[:P] if "min_p" in mode else None)

    def _sampled_target(self, P: int, logits, warp: dict, drafter):
        """The verdict function for a batch with sampled rows (see ``CycleState.advance``):
        rejection sampling of each candidate against the target's warped distribution,
        the draws keyed on (seed, the candidate's position); greedy rows take the argmax."""
        from vllm_spd.core import keyed_random as kr
        from vllm_spd.core import verify

        seed = self.seed[:P]

        def target(cand, pos):
            p = verify.target_probs(logits, **warp)
            has = cand >= 0
            u = kr.uniform(seed, pos, kr.SALT_ACCEPT)
            noise = kr.exponential(seed, pos, kr.SALT_RESIDUAL, p.shape[1])
            # a deterministic proposal (oracle, prompt lookup): q is one-hot at the candidate
            x = cand.clamp(min=0)[:, None]
            p_x = p.gather(1, x)[:, 0].double()
            ok = has & (p_x > 0) & (u <= p_x)
            residual = torch.where(has[:, None], p.scatter(1, x, 0.0), p)
            tok = torch.where(ok, cand, verify.sample_from_probs(residual, noise=noise))
            q, deterministic = drafter.proposal(pos)
            if q is not None:   # the draft module's sampled proposal q of that position
                _, sampled = verify.verify_sampled(p, cand, q * has[:, None], self.drafts.pdm.draft_token_ids,
                                                   uniform=u, noise=noise)
                tok = sampled if deterministic is None else torch.where(deterministic, tok, sampled)
            return torch.where(verify.greedy_mask(warp["temperature"]), logits.argmax(dim=-1), tok)
        return target

    def _run_layers(self, tm, s: int, P: int, hidden, residual, capture=()):
        """Stage ``s``'s layers on its plan's rows; anchor k in ``capture`` is
        ``hidden + residual`` after layer k-1. Returns ``(hidden, residual, {k: anchor})``."""
        from vllm.forward_context import set_forward_context

        attn, slots, schedule = self._metadata(P, s)
        for plan_schedule in schedule:
            plan_schedule()
        positions = self.plan.positions[s, :P]
        first, last = self.runner.spd_layout.ranges[s]
        caught = {}
        with set_forward_context(attn, self.runner.vllm_config, num_tokens=P, slot_mapping=slots):
            if self.compiled is not None:
                return self.compiled(first, last, positions, hidden, residual, capture)
            for i in range(first, last):
                hidden, residual = tm.layers[i](positions, hidden, residual)
                if i + 1 in capture:
                    caught[i + 1] = hidden + residual
        return hidden, residual, caught

    def _metadata(self, P: int, s: int):
        """Stage ``s``'s attention metadata over its row of the plan: built once per batch
        size on a GPU (with FlashAttention 3's schedule planned once per cycle, see
        ``SliceRunner.device_schedule``), every stage on CPU (``SliceRunner.device_metadata``)."""
        if (P, s) in self.meta:
            return self.meta[(P, s)]
        slices = self.runner.spd_slices
        first, last = self.runner.spd_layout.ranges[s]
        attn, slots = slices.device_metadata(
            [slices.layer_names[i] for i in range(first, last)], self.query_start_loc[: P + 1],
            self.plan.seq_lens[s, :P], self.block_table[:P], self.plan.slots[s, :P], max_query_len=1,
            max_seq_len=self.runner.max_model_len)
        if not self.on_gpu:
            return attn, slots, []
        self.meta[(P, s)] = attn, slots, slices.device_schedule(attn) if self.schedule_once else []
        return self.meta[(P, s)]

    # -- graphs and timing --------------------------------------------------------------
    def _compile(self, backend: str | None) -> None:
        """Compile the stage slices and the draft module's layers with ``backend`` (None: run them eagerly)."""
        from vllm_spd.engine.stage_compile import CompiledStages

        self.compiled = None if backend is None else CompiledStages(self.runner.get_model().model.layers, backend)
        if self.drafts is not None:
            self.drafts.compiled = None if backend is None else CompiledStages(self.drafts.pdm.layers, backend)

    @torch.inference_mode()
    def capture(self) -> None:
        mode = self.mode()
        self._compile(envs.stage_compile("inductor"))
        if self.compiled is not None:
            logger.info("spd: compiling the device cycle's layers (%s) before capturing its CUDA graphs; "
                        "this can take minutes (%s=0 runs them eagerly)", self.compiled.backend,
                        envs.STAGE_COMPILE_VAR)
        t0 = time.perf_counter()
        for P in sorted(self.sizes, reverse=True):
            self._capture(P, mode)
        logger.info("spd: captured device-cycle CUDA graphs (%s drafts, greedy) for batch sizes %s in %.1f s, "
                    "stage slices %s", mode[0], self.sizes, time.perf_counter() - t0,
                    f"compiled ({self.compiled.backend})" if self.compiled is not None else "eager")

    @torch.inference_mode()
    def _capture(self, P: int, mode: tuple) -> dict:
        """The graphs of ``per_launch`` cycles and of one for ``P`` rows (on a pipeline
        rank: :class:`HopGraphs`). Captured on dead rows (no KV writes, no state change);
        replays read whatever the state holds then. Should the layers fail to compile,
        or FlashAttention's schedule fail to plan or capture inside the cycle, the layers
        run eagerly, or each layer plans its own schedule again, and the capture is
        retried. A rank captures alone: its warm-up and its graphs leave out the hop, so
        no rank waits for another."""
        st = self.state
        saved = st.real.clone()
        st.real.zero_()
        if not hasattr(self, "_pool"):
            self._pool = torch.cuda.graph_pool_handle()
        try:
            graphs = self._record(P, mode)
        except Exception as err:
            if self.compiled is not None:   # the layers as vLLM's CUDA kernels run them, one by one
                logger.warning("spd: compiling the device cycle's layers failed (%s: %s); they run eagerly, "
                               "with %s=0 to skip compiling", type(err).__name__, err, envs.STAGE_COMPILE_VAR)
                self._compile(None)
                self.graphs.clear()
                st.real.copy_(saved)
                return self._capture(P, mode)
            if not self.schedule_once:
                raise
            logger.warning("spd: FlashAttention's schedule planned once per stage failed in the cycle's graph "
                           "(%s); every layer plans its own", err)
            self.schedule_once = False
            for attn, _, _ in self.meta.values():
                for meta in attn.values():
                    meta.scheduler_metadata = None
            self.meta.clear()
            self.graphs.clear()
            st.real.copy_(saved)
            return self._capture(P, mode)
        st.real.copy_(saved)
        self.graphs[(P, mode)] = graphs
        return graphs

    def _record(self, P: int, mode: tuple) -> dict:
        """Warm up, then capture (see :meth:`_capture`)."""
        if self.link is not None:
            hop = self._compute(P, mode)          # warm-up outside the capture, the hop left out
            self._absorb(P, hop)
            torch.cuda.synchronize()
            # thread_local: ProcessGroupNCCL's watchdog thread keeps querying this rank's
            # earlier NCCL work while a mode is captured mid-serving
            compute, absorb = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(compute, pool=self._pool, capture_error_mode="thread_local"):
                hop = self._compute(P, mode)
            with torch.cuda.graph(absorb, pool=self._pool, capture_error_mode="thread_local"):
                self._absorb(P, hop)
            torch.cuda.synchronize()
            return {1: HopGraphs(self, P, compute, hop, absorb)}
        graphs = {c: torch.cuda.CUDAGraph() for c in {self.per_launch, 1}}
        self._cycle(P, mode)                  # warm-up outside the capture
        torch.cuda.synchronize()
        for c, graph in graphs.items():
            with torch.cuda.graph(graph, pool=self._pool):
                for _ in range(c):
                    self._cycle(P, mode)
            torch.cuda.synchronize()
        return graphs

    def _launch_size(self, k: int) -> int:
        """``k`` cycles per launch as taken: 1 to ``cycles_per_step``; 1 on a pipeline
        rank, whose hop runs between each cycle's graphs."""
        return 1 if self.link is not None else max(1, min(k, self.cycles_per_step))

    def set_cycles_per_graph(self, k: int) -> int:
        """Launch ``k`` cycles per graph from now on (at most ``cycles_per_step``),
        capturing the graphs again where it changes; returns the value taken."""
        k = self._launch_size(k)
        if k == self.per_launch:
            return k
        self.per_launch = k
        if self.graphs:
            self.flush()   # capturing runs cycles over the buffers that hold the resident rows
            modes = sorted(self.graphs, key=lambda key: -key[0])
            self.graphs.clear()
            for P, mode in modes:
                self._capture(P, mode)
        return self.per_launch

    def _timed_launch(self, graph, cycles: int) -> None:
        """A launch of ``cycles`` cycles with its host time and device time recorded (events around it)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        graph.replay()
        end.record()
        self.samples["launch_us"].append(1e6 * (time.perf_counter() - t0))
        self.samples["launch_cycles"].append(cycles)
        self._events.append((start, end))

    def _load_summary(self) -> dict:
        """The load's host time and its phases (medians), for steps that loaded the
        whole batch (``full``) and steps over resident rows (``resident``) apart."""
        out = {}
        for kind, flag in (("full", 0), ("resident", 1)):
            picked = [i for i, r in enumerate(self.samples["step_resident"]) if r == flag]
            phases = [self.samples["load_phases_us"][i] for i in picked]
            out[f"step_load_{kind}_us"] = _median_or_none([self.samples["step_load_us"][i] for i in picked])
            out[f"step_load_phases_{kind}_us"] = (
                {name: _median_or_none(list(p)) for name, p in zip(LOAD_PHASES, zip(*phases))} if phases else None)
        return out

    def set_timing(self, on: bool) -> dict:
        """Switch per-cycle timing on or off; returns what was measured since it was last
        switched: the host's time per cycle (graph launches, plus each step's load and
        read-back spread over its cycles, the wait for the device excluded), the device's
        time per cycle (CUDA events around each launch, divided by its cycles) and its
        idle time between consecutive launches of a step (from one launch's end event to
        the next one's start) and between the last launch of a step and the first of the
        next (the engine step's own turn-around: read-back, scheduler, next load);
        ``step_load_us`` is the part of a step's host time spent loading the batch before
        its first launch."""
        import statistics

        out = {}
        ev = getattr(self, "_events", [])
        if ev:
            torch.cuda.synchronize()
            per = self.samples["launch_cycles"]
            dev = [a.elapsed_time(b) / c for (a, b), c in zip(ev, per)]
            bounds, at = set(), 0
            for c in self.samples["step_launches"]:
                at += c
                bounds.add(at)
            gaps = [(i + 1 in bounds, 1000 * ev[i][1].elapsed_time(ev[i + 1][0])) for i in range(len(ev) - 1)]
            idle = [g for between_steps, g in gaps if not between_steps]
            step_idle = [g for between_steps, g in gaps if between_steps]
            cycles = sum(per)
            host = sum(self.samples["launch_us"]) + sum(self.samples["step_host_us"])
            out = {"cycles": cycles, "steps": len(self.samples["step_launches"]),
                   "stage_compile": None if self.compiled is None else self.compiled.backend,
                   "cycles_per_graph": self.per_launch,
                   "host_us_per_cycle": round(host / max(cycles, 1), 2),
                   "launch_us_per_cycle": round(statistics.median(
                       us / c for us, c in zip(self.samples["launch_us"], per)), 2),
                   "step_host_us": round(statistics.median(self.samples["step_host_us"]), 1),
                   "step_load_us": round(statistics.median(self.samples["step_load_us"]), 1),
                   "resident_steps": sum(self.samples["step_resident"]),
                   **self._load_summary(),
                   "device_ms_per_cycle": round(statistics.median(dev), 4),
                   "idle_us_between_cycles": round(statistics.median(idle), 2) if idle else None,
                   "idle_us_between_cycles_p90": round(sorted(idle)[int(0.9 * (len(idle) - 1))], 2) if idle else None,
                   "idle_us_between_steps": round(statistics.median(step_idle), 1) if step_idle else None}
        self.timing = on
        self._events = []
        self.samples = {key: [] for key in TIMING_SAMPLES}
        return out


@dataclass
class Row:
    """One row of a step's read-back: its window (``tok``, ``depth``, newest first),
    the tokens it committed (``ring``), and its counters."""
    tok: list[int]
    depth: list[int]
    ring: list[int]
    head: int
    wlen: int
    committed_len: int
    ring_len: int
    cycles: int
    verified: int
    accepted: int
    pending: int

    @classmethod
    def parse(cls, values: list[int], width: int, ring: int) -> "Row":
        w, r = width, ring
        return cls(values[:w], values[w:2 * w], values[2 * w:2 * w + r], *values[2 * w + r:])


@dataclass
class Resident:
    """The rows left on the device by the last step: its requests in row order, its
    padded batch and mode, what it read back, and each row's block count then."""
    reqs: list
    P: int
    mode: tuple
    rows: list[Row]
    blocks: list[int]

    def holds(self, reqs, P: int, mode: tuple) -> bool:
        """Whether a step over ``reqs`` finds their state here: the same requests (the
        same objects: a preempted and resumed request is a new one) in the same rows."""
        return (P == self.P and mode == self.mode and len(reqs) == len(self.reqs)
                and all(a is b for a, b in zip(reqs, self.reqs)))


@dataclass
class Hop:
    """A pipeline rank's traffic of one cycle, in buffers kept for its padded batch:
    which rows took part (``live``), the messages it sends and receives
    (``(tensor, stage, tag)``; receives also carry their anchor ids and whether they
    hold rows) and, on the controller, what each stage ran (``started``), for the
    anchors that arrive."""
    live: torch.Tensor
    sends: list
    recvs: list
    started: dict | None = None


class HopGraphs:
    """A pipeline rank's cycle as two CUDA graphs, the cycle's compute and what the hop
    brought, with the hop between them launched eagerly (on NCCL the stream waits for
    it, the host does not): one cycle a launch, no host wait."""

    def __init__(self, cycle: DeviceCycle, P: int, compute, hop: Hop, absorb):
        self.cycle, self.P, self.compute, self.hop, self.absorb = cycle, P, compute, hop, absorb

    def replay(self) -> None:
        self.compute.replay()
        self.cycle._communicate(self.P, self.hop)
        self.absorb.replay()


def _median_or_none(values: list) -> float | None:
    import statistics

    return round(statistics.median(values), 1) if values else None


def load_packed(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Each host tensor of ``pairs`` ``(device destination, host values)`` into its
    destination, all of them through one host-to-device copy and one multi-tensor copy
    on the device (destinations of one dtype, each contiguous), not one copy each."""
    dsts, srcs = zip(*pairs)
    flat = torch.cat([v.reshape(-1) for v in srcs]).to(dsts[0].device, non_blocking=True)
    views = [part.view(d.shape) for part, d in zip(flat.split([v.numel() for v in srcs]), dsts)]
    torch._foreach_copy_(list(dsts), views)


def applies(runner) -> bool:
    """Whether this deployment can use the device cycle at all: verdicts without lag, a
    drafter it runs (the head's where one is configured), not switched off. Decided
    from the configuration alone, the same on every pipeline rank."""
    from vllm_spd import envs

    cfg = runner.spd_cfg
    return (envs.device_cycle() and cfg.verdict_lag == 0
            and (cfg.drafter in ("oracle", "ngram") or (cfg.drafter in ("head", "hybrid") and cfg.model is not None)))


def graphs_supported(runner) -> tuple[bool, str]:
    """Whether the device cycle is captured: a GPU, CUDA graphs on, the deployment
    served (:func:`applies`), and attention whose metadata replays for any batch in a
    full graph (``AttentionCGSupport.ALWAYS``: FlashAttention 3, Triton)."""
    from vllm_spd import envs

    if runner.device.type != "cuda":
        return False, "not a CUDA device"
    if not applies(runner):
        why = f"{envs.DEVICE_CYCLE_VAR}=0" if not envs.device_cycle() else "it serves verdict_lag 0 only"
        return False, why
    if runner.spd_link is not None and not envs.rank_graphs():
        return False, f"{envs.RANK_GRAPHS_VAR}=0"
    if runner.model_config.enforce_eager:
        return False, "vLLM runs eagerly"
    from vllm.v1.attention.backend import AttentionCGSupport

    for group in runner.spd_slices._attention_groups():
        builder = group.get_metadata_builder()
        support = builder.get_cudagraph_support(runner.vllm_config, group.kv_cache_spec)
        if support != AttentionCGSupport.ALWAYS:
            return False, f"{type(builder).__name__} supports {support.name}, not ALWAYS"
    return True, ""
