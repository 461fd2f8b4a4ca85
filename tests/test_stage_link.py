"""SPD's control channel between stage ranks (two real gloo processes) and the encoding
of a cycle's drafts and verdicts on it."""

import socket
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp

from vllm_spd.engine.stage_link import CONTROL_FIELDS, decode_control, encode_control


def test_control_encoding_round_trip():
    drafts = [5, None, 7, 0]
    verdicts = [(True, 5), None, (False, 9), (False, 0)]
    values = encode_control(drafts, verdicts)
    assert len(values) == CONTROL_FIELDS * len(drafts)
    assert decode_control(values) == (drafts, verdicts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from vllm_spd.engine.stage_link import StageLink

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    link = StageLink(SimpleNamespace(ranks=[0, 1], rank_in_group=rank, world_size=2), torch.device("cpu"))
    got = []
    if link.is_controller:
        # Several cycles' broadcasts in flight at once, sent before the other rank posts;
        # a rank with nothing to say sends nothing.
        sent = [link.post_control([10 * c + i for i in range(3)], 3) for c in range(4)]
        got = [c.wait() for c in sent] + [link.post_control([], 0).wait()]
    else:
        posted = [link.post_control(None, 3) for _ in range(4)]
        got = [c.wait() for c in reversed(posted)][::-1] + [link.post_control(None, 0).wait()]
    queue.put((rank, got))
    dist.destroy_process_group()


def test_control_broadcasts_posted_ahead_arrive_in_order():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = [[10 * c + i for i in range(3)] for c in range(4)] + [[]]
    assert results == {0: expected, 1: expected}
