"""The order of one cycle's steps on each rank (``SPDRunnerMixin._spd_decode``), with the
device work stubbed out: pure control flow, no vLLM.

The controller must queue its stage before it reads last cycle's verdicts. Reading
them waits for its device to finish what was queued before them; with the stage not
yet queued, the device would sit idle while the host broadcasts and prepares the
stage. On 2x H200 that cost 18% of the speed (README, n=2 section). The other ranks
post their receives, including the control's, before their stage and wait for the
control only after it.
"""

from types import SimpleNamespace

import pytest
import torch

from vllm_spd.core.pipeline import CommitGate, RequestPipeline
from vllm_spd.engine.cycle_timer import CycleTimer
from vllm_spd.engine.runner import SPDRequest, SPDRunnerMixin


class FakeControl:
    def __init__(self, log, values):
        self.log, self.values = log, values

    def wait(self):
        self.log.append("control.wait")
        return self.values


class FakeLink:
    def __init__(self, log, stage, num_stages):
        self.log, self.stage, self.num_stages = log, stage, num_stages

    @property
    def is_controller(self):
        return self.stage == self.num_stages - 1

    def post_control(self, values, count):
        self.log.append("post_control")
        # the other ranks receive "no draft, no verdict" for each request
        return FakeControl(self.log, values if values is not None else [-1, 0, -1] * (count // 3))


class FakeDrafter:
    def __init__(self, log):
        self.log = log

    def begin(self, active, index, wants):
        self.log.append("draft_begin")
        return lambda: lambda: [None] * len(active)


class Recorder(SPDRunnerMixin):
    def __init__(self, link, lag, cycles):
        self.log = []
        self.spd_link = link(self.log) if link else None
        self.spd_cfg = SimpleNamespace(cycles_per_step=cycles, verdict_lag=lag)
        self.spd_timer = CycleTimer(torch.device("cpu"))
        self.requests = {"r": SimpleNamespace(block_ids=[[0, 1, 2, 3]])}
        self.cache_config = SimpleNamespace(block_size=16)
        self.max_model_len = 64
        req = SPDRequest("r", RequestPipeline(2 + lag, token=7, pos=5), sampling=None)
        req.gate = CommitGate(set(), set(), 0, 1 << 30)
        self.spd_requests = {"r": req}
        self.spd_device = None     # the host-driven cycle (device_cycle.py has no such order)
        self.spd_drafter = FakeDrafter(self.log)

    def _spd_post_receives(self, plan):
        self.log.append("post_receives")
        return []

    def _spd_run_stages(self, plan, index):
        self.log.append("stage")

    def _spd_judge(self, active):
        self.log.append("read_verdicts")
        return [None] * len(active)

    def _spd_apply(self, active, verdicts, index, committed, stats):
        self.log.append("commit")

    def _spd_verify_ahead(self, active):
        self.log.append("verify_ahead")

    def _spd_receive(self, posted):
        self.log.append("receive")


def one_cycle(link, lag):
    r = Recorder(link, lag, cycles=1)
    r._spd_decode([(0, "r", 4)], {})
    return r.log


@pytest.mark.parametrize("lag", [0, 1])
def test_controller_queues_its_stage_before_reading_verdicts(lag):
    log = one_cycle(lambda log: FakeLink(log, stage=1, num_stages=2), lag)
    assert log.index("post_receives") < log.index("draft_begin") < log.index("stage") \
        < log.index("read_verdicts") < log.index("post_control") < log.index("commit")
    assert ("verify_ahead" in log) == bool(lag)
    assert log[-2:] == ["receive", "control.wait"]   # its broadcast went out before the next cycle


def test_other_ranks_post_every_receive_before_their_stage():
    log = one_cycle(lambda log: FakeLink(log, stage=0, num_stages=2), 1)
    assert log == ["post_receives", "post_control", "stage", "control.wait", "commit", "receive"]


@pytest.mark.parametrize("lag", [0, 1])
def test_one_worker_drafts_around_its_stages_and_judges_after(lag):
    log = one_cycle(None, lag)
    assert log[:3] == ["draft_begin", "stage", "read_verdicts"] and "post_control" not in log
