"""Peer-to-peer traffic between stage ranks, on SPD's own process groups.

With one stage per pipeline-parallel rank, every engine step runs the same cycle loop
on every rank. Per cycle:

- stage s sends its output rows (hidden, residual) to stage s+1, which runs them next
  cycle;
- stages send the anchors they captured to the *controller* (the last stage, which
  also drafts and verifies); the stage just before the controller sends its rows and
  anchors as one message;
- the controller broadcasts the cycle's *control*: the draft and the verdict of every
  active request, so each rank advances identical copies of the request pipelines.
  Every rank posts its receive of it before its own stage. The controller sends it
  once its own stage is queued (with ``verdict_lag`` 1 it then reads verdicts queued
  a cycle earlier), so the other ranks get it while their stage still runs.

Both sides always know how many rows move (they hold the same pipeline states), so
no shapes travel, and a rank posts its receives first thing in a cycle, before its
own stage is queued.
Data goes on a device group of its own (NCCL on GPU, gloo on CPU), control on a gloo
group: never on the groups vLLM's own pipeline transfers use.
"""

from __future__ import annotations

from datetime import timedelta

import torch

from vllm_spd import envs

#: gloo matches point-to-point messages by tag; NCCL keeps per-peer order instead,
#: so every receiver posts its receives in the order the sender sent.
TAG_STAGE = 1
TAG_ANCHORS = 2

#: ints per request in a cycle's control: draft (-1: none), verdict (0: none, 1: reject,
#: 2: accept), committed token (-1: none)
CONTROL_FIELDS = 3


def encode_control(drafts: list[int | None], verdicts: list[tuple[bool, int] | None]) -> list[int]:
    """A cycle's drafts and verdicts as the control broadcast carries them."""
    values = []
    for d, v in zip(drafts, verdicts):
        values += [-1 if d is None else d, 0 if v is None else 1 + int(v[0]), -1 if v is None else v[1]]
    return values


def decode_control(got: list[int]):
    """The inverse of :func:`encode_control`: ``(drafts, verdicts)``."""
    rows = [got[i: i + CONTROL_FIELDS] for i in range(0, len(got), CONTROL_FIELDS)]
    drafts = [None if d < 0 else d for d, _, _ in rows]
    verdicts = [None if v == 0 else (v == 2, t) for _, v, t in rows]
    return drafts, verdicts


class StageLink:
    def __init__(self, pp_group, device: torch.device):
        import torch.distributed as dist

        self._dist = dist
        self.ranks = list(pp_group.ranks)          # global ranks, stage order
        self.stage = pp_group.rank_in_group
        self.num_stages = pp_group.world_size
        self.device = device
        # new_group is collective over the whole world: every worker runs this. A rank
        # that dies mid-cycle leaves its peers waiting; the timeout turns that into an
        # error (and a dead engine) instead of a hang.
        timeout = timedelta(seconds=envs.stage_timeout_s())
        data_backend = "nccl" if device.type == "cuda" else "gloo"
        self.data_group = dist.new_group(self.ranks, backend=data_backend, timeout=timeout)
        self.ctrl_group = dist.new_group(self.ranks, backend="gloo", timeout=timeout)
        self._sends: list = []

    @property
    def controller(self) -> int:
        return self.num_stages - 1

    @property
    def is_controller(self) -> bool:
        return self.stage == self.controller

    # -- data ----------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, to_stage: int, tag: int) -> None:
        """Non-blocking; the tensor is kept alive until :meth:`wait_sends`."""
        tensor = tensor.contiguous()
        work = self._dist.isend(tensor, dst=self.ranks[to_stage], group=self.data_group, tag=tag)
        self._sends.append((work, tensor))

    def post_recv(self, shape, dtype, from_stage: int, tag: int):
        """Non-blocking receive: ``(tensor, work)``; ``work.wait()`` before using the
        tensor (on NCCL that orders the current stream after the transfer, on gloo it
        blocks until the message is in)."""
        out = torch.empty(shape, dtype=dtype, device=self.device)
        work = self._dist.irecv(out, src=self.ranks[from_stage], group=self.data_group, tag=tag)
        return out, work

    def recv(self, shape, dtype, from_stage: int, tag: int) -> torch.Tensor:
        out, work = self.post_recv(shape, dtype, from_stage, tag)
        work.wait()
        return out

    def wait_sends(self) -> None:
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()

    # -- the device cycle's per-cycle traffic (device_cycle.py) ----------------------
    def broadcast_from_controller(self, tensor: torch.Tensor) -> None:
        """``tensor`` of the controller on every rank, in place, over the data group: on
        NCCL the current stream waits for it and the host does not."""
        self._dist.broadcast(tensor, src=self.ranks[self.controller], group=self.data_group)

    def exchange(self, sends: list[tuple[torch.Tensor, int, int]], recvs: list[tuple[torch.Tensor, int, int]]) -> None:
        """One batch of ``(tensor, stage, tag)`` sends and receives, posted together so
        that a ring of them cannot deadlock (NCCL runs a batch as one group), then
        waited for (on NCCL: the stream waits, the host does not)."""
        P2POp = self._dist.P2POp
        ops = [P2POp(self._dist.isend, t.contiguous(), self.ranks[stage], self.data_group, tag)
               for t, stage, tag in sends]
        ops += [P2POp(self._dist.irecv, t, self.ranks[stage], self.data_group, tag) for t, stage, tag in recvs]
        if ops:
            for work in self._dist.batch_isend_irecv(ops):
                work.wait()

    # -- control -------------------------------------------------------------------
    def post_control(self, values: list[int] | None, count: int) -> "Control":
        """Start the broadcast of the controller's ``values`` (``count`` ints; None on the
        other ranks) without waiting: a rank posts its receive before its stage, so the
        controller's send never waits for a rank still queueing its stage, and the
        controller sends as soon as its values exist. :meth:`Control.wait` gives them."""
        if not count:
            return Control(torch.empty(0, dtype=torch.int64), None)
        buf = torch.tensor(values, dtype=torch.int64) if self.is_controller else \
            torch.empty(count, dtype=torch.int64)
        assert buf.numel() == count, (buf.numel(), count)
        work = self._dist.broadcast(buf, src=self.ranks[self.controller], group=self.ctrl_group, async_op=True)
        return Control(buf, work)

    def broadcast_control(self, values: list[int] | None, count: int) -> list[int]:
        """The controller's ``values`` (``count`` ints) on every rank."""
        return self.post_control(values, count).wait()


class Control:
    """One control broadcast in flight (see :meth:`StageLink.post_control`)."""

    def __init__(self, buf: torch.Tensor, work):
        self._buf = buf
        self._work = work

    def wait(self) -> list[int]:
        """The controller's values, once they are in (on the controller: once sent)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
        return self._buf.tolist()
