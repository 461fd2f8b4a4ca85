"""Greedy verification's fixed-shape path (vllm_spd/engine/verify_graphs.py) gives exactly the
verdicts of the eager path (LM head in float32, then verify_drafts), row for row,
including drafts of -1 (nothing to verify), ties in the logits and rows in bf16."""

import pytest
import torch

from vllm_spd.engine.verdicts import RequestSampling, verify_drafts
from vllm_spd.engine.verify_graphs import VerifyGraphs


class LMHead:
    def __init__(self, weight):
        self.weight = weight

    def compute_logits(self, hidden):
        return hidden @ self.weight.T


def eager(head, hidden, drafts):
    greedy = RequestSampling(0.0, 0, 1.0, 0.0, None)
    logits = head.compute_logits(hidden).float()
    accepted, tokens = verify_drafts(logits, drafts, [None] * len(drafts), [greedy] * len(drafts), None)
    return torch.stack([accepted.to(tokens.dtype), tokens])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fixed_shape_path_matches_eager_verification(dtype):
    g = torch.Generator().manual_seed(0)
    H, V = 32, 50
    weight = torch.randn(V, H, generator=g).to(dtype)
    weight[7] = weight[3]            # vocabulary rows 3 and 7 always tie: argmax takes 3
    head = LMHead(weight)
    graphs = VerifyGraphs(head, H, dtype, torch.device("cpu"), max_rows=6)
    for rows in (1, 3, 6):
        hidden = torch.randn(rows, H, generator=g).to(dtype)
        best = head.compute_logits(hidden).float().argmax(-1).tolist()
        # accepted, rejected, nothing drafted, and a draft equal to the tied loser
        drafts = [best[0]] + [(b + 1) % V for b in best[1:]]
        if rows > 2:
            drafts[2] = -1
        out = graphs.verify(list(hidden), drafts)          # rows as a list of [H] tensors
        assert torch.equal(out, eager(head, hidden, drafts))
        assert torch.equal(graphs.verify(hidden, drafts), out)   # or as one tensor
    tie = torch.zeros(2, H, dtype=dtype)
    tie[:, 0] = 1.0
    weight[3, 0] = weight[7, 0] = 100.0
    out = graphs.verify(tie, [7, 3])
    assert out.tolist() == [[0, 1], [3, 3]] and torch.equal(out, eager(head, tie, [7, 3]))


def test_fits_up_to_its_row_count():
    graphs = VerifyGraphs(LMHead(torch.zeros(4, 2)), 2, torch.float32, torch.device("cpu"), max_rows=3)
    assert graphs.fits(3) and not graphs.fits(4)


def test_no_capture_off_a_gpu():
    """Off a GPU nothing is captured or stored, and vLLM's graph memory figure stands."""
    from types import SimpleNamespace

    from vllm_spd.engine.runner import SPDRunnerMixin
    from vllm_spd.engine.verify_graphs import graphs_supported

    runner = SimpleNamespace(device=torch.device("cpu"))
    made = []
    size = SPDRunnerMixin._spd_capture_graphs(runner, 5, "verification", graphs_supported, made.append,
                                              "spd_verify_graphs")
    assert size == 5 and not made and not hasattr(runner, "spd_verify_graphs")
    assert graphs_supported(runner) == (False, "not a CUDA device")
