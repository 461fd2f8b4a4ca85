"""PDM kernels (vllm_spd.kernels): Triton kernel vs torch reference, sampling statistics.

Where the kernels run:
* CUDA machine: compiled Triton on the GPU (fp32, fp16, plus the bf16/CUDA-graph tests).
* CPU machine: Triton's interpreter (fp32/fp16 only: bf16 is wrong there).  Triton reads
  TRITON_INTERPRET when it is first imported and when a kernel is decorated, so the flag
  is set just for those imports below and restored at once (vLLM engines that other test
  modules spawn must not inherit it), then set again only while this module's tests run.
  If triton was imported earlier in this process without the flag, the kernels cannot be
  interpreted here: the kernel tests skip and ``test_kernels_in_subprocess`` runs this
  file in a fresh interpreter instead.

Interpreter cost is per element loaded (~10M elements/s), so the Qwen3-8B shapes read
few weights: the aggregation rows use two types (the other types' weights are NaN, which
also proves they are never read), and the full 32000x4096 head runs once, greedy, fp16.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vllm_spd.kernels import (
    DraftSampling,
    PackedAggregation,
    aggregate_anchors,
    aggregate_anchors_reference,
    draft_head,
    draft_head_reference,
    draft_logits_reference,
    pack_aggregation_weights,
    resolve_backend,
)
from vllm_spd.core.verify import target_probs
from vllm_spd.kernels.aggregation import type_offset

ON_GPU = torch.cuda.is_available()
_SET_INTERPRET = not ON_GPU and "triton" not in sys.modules
_PREV_INTERPRET = os.environ.get("TRITON_INTERPRET")
if _SET_INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton  # noqa: F401

    try:  # imported lazily at the first launch, where it asserts on the flag
        import triton.experimental.gluon  # noqa: F401
    except ImportError:
        pass
    from triton.runtime.interpreter import InterpretedFunction

    from vllm_spd.kernels import aggregation_triton, draft_head_triton

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
finally:
    if _SET_INTERPRET:
        if _PREV_INTERPRET is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _PREV_INTERPRET

INTERPRETED = HAVE_TRITON and isinstance(aggregation_triton._aggregate_kernel, InterpretedFunction)
KERNELS_HERE = HAVE_TRITON and (ON_GPU or INTERPRETED)
DEVICE = "cuda" if ON_GPU else "cpu"

needs_kernels = pytest.mark.skipif(
    not KERNELS_HERE,
    reason="no triton, or triton imported before this module without TRITON_INTERPRET "
           "(then test_kernels_in_subprocess covers these)")
needs_gpu = pytest.mark.skipif(not (ON_GPU and HAVE_TRITON), reason="needs a CUDA GPU and triton")
KERNEL_DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True, scope="module")
def _interpreter_flag():
    if not INTERPRETED:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def _blocks(interp: dict, gpu: dict | None = None) -> dict:
    """Tile sizes: big ones make the interpreter take fewer (vectorised) steps."""
    return interp if INTERPRETED else (gpu or {})


# --------------------------------------------------------------------------- aggregation


def _aggregation_case(h, m, types, dtype, *, bias=False, slots=False, seed=0):
    """Random packed weights, anchors [m, S, H] with NaN in every entry no row may read."""
    gen = torch.Generator().manual_seed(seed)
    types = torch.tensor(types, dtype=torch.int64)
    num_rows = types.numel()
    w = [torch.randn(h, (a + 1) * h, generator=gen) * (a + 1) ** -0.5 / h ** 0.5 for a in range(m)]
    b = [torch.randn(h, generator=gen) if a % 2 == 0 else None for a in range(m)] if bias else None
    packed = pack_aggregation_weights([x.to(dtype) for x in w], b and [x if x is None else x.to(dtype) for x in b])
    num_slots = num_rows + 3 if slots else num_rows
    slot_of_row = torch.randperm(num_slots, generator=gen)[:num_rows] if slots else torch.arange(num_rows)
    anchors = torch.full((m, num_slots, h), float("nan"))
    for r in range(num_rows):
        t = int(types[r])
        anchors[: t + 1, slot_of_row[r]] = torch.randn(t + 1, h, generator=gen)
    anchors = anchors.to(dtype).to(DEVICE)
    packed = PackedAggregation.from_buffer(packed.weight.to(DEVICE), h, m,
                                           None if packed.bias is None else packed.bias.to(DEVICE))
    return anchors, types.to(DEVICE), packed, (slot_of_row.to(DEVICE) if slots else None)


def _assert_close(got, ref, dtype):
    tol = TOL[dtype]
    scale = max(ref.float().abs().max().item(), 1.0)
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * scale)


def test_pack_layout_and_views():
    h, m = 6, 3
    w = [torch.randn(h, (a + 1) * h) for a in range(m)]
    packed = pack_aggregation_weights(w, [None, torch.ones(h), None])
    assert packed.weight.numel() == h * h * (1 + 2 + 3)
    assert packed.offsets == tuple(type_offset(h, a) for a in range(m)) == (0, 36, 108)
    for a in range(m):
        assert torch.equal(packed.type_weight(a), w[a])
        assert packed.type_weight(a).data_ptr() == packed.weight[packed.offsets[a]:].data_ptr()
    with pytest.raises(ValueError):
        PackedAggregation(packed.weight, (0, 36, 100), None, h, m)
    assert torch.equal(packed.bias, torch.stack([torch.zeros(h), torch.ones(h), torch.zeros(h)]))
    with pytest.raises(ValueError):
        pack_aggregation_weights([torch.randn(h, h), torch.randn(h, h)])


def test_aggregation_reference_is_concat_then_linear():
    """The reference against the definition, row by row (independent of its batching)."""
    anchors, types, packed, slots = _aggregation_case(8, 4, [3, 0, 2, 1, 3, 0], torch.float32,
                                                      bias=True, slots=True)
    anchors, types, slots = anchors.cpu(), types.cpu(), slots.cpu()
    packed = PackedAggregation.from_buffer(packed.weight.cpu(), 8, 4, packed.bias.cpu())
    out = aggregate_anchors_reference(anchors, types, packed, slots=slots)
    for r, a in enumerate(types.tolist()):
        x = torch.cat([anchors[j, slots[r]] for j in range(a + 1)])
        expect = torch.nn.functional.linear(x, packed.type_weight(a), packed.bias[a])
        torch.testing.assert_close(out[r], expect)


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("types,bias,slots", [
    ([2], False, False),                       # R=1
    ([2, 0, 1, 1, 0, 2, 0], True, True),      # R=7, mixed types, bias, slot indirection
    ([a % 3 for a in range(70)], False, False),  # 70 rows: two 64-row chunks
])
def test_aggregation_kernel_odd_sizes(dtype, types, bias, slots):
    anchors, types, packed, slot_of_row = _aggregation_case(100, 3, types, dtype, bias=bias, slots=slots)
    ref = aggregate_anchors_reference(anchors, types, packed, slots=slot_of_row)
    got = aggregation_triton.aggregate_anchors_triton(
        anchors, types, packed, slots=slot_of_row, **_blocks(dict(block_n=32, block_k=64)))
    assert got.dtype == dtype and got.shape == (types.numel(), 100)
    _assert_close(got, ref, dtype)


@needs_kernels
def test_aggregation_kernel_strided_anchors_and_out():
    """Anchors stored token-major [S, m, H] (a permuted view) and a strided output view."""
    anchors, types, packed, _ = _aggregation_case(100, 3, [1, 2, 0, 2], torch.float32)
    token_major = anchors.transpose(0, 1).contiguous()  # [S, m, H]
    out = torch.zeros(4, 2 * 100, device=DEVICE)[:, ::2]
    aggregation_triton.aggregate_anchors_triton(
        token_major.transpose(0, 1), types, packed, out=out, **_blocks(dict(block_n=64, block_k=64)))
    _assert_close(out, aggregate_anchors_reference(anchors, types, packed), torch.float32)


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_aggregation_kernel_smollm2_shapes(dtype):
    """H=576, m=5, two requests in steady state (one row of each type per request)."""
    anchors, types, packed, _ = _aggregation_case(576, 5, [4, 3, 2, 1, 0] * 2, dtype)
    ref = aggregate_anchors_reference(anchors, types, packed)
    got = aggregation_triton.aggregate_anchors_triton(anchors, types, packed,
                                                      **_blocks(dict(block_n=256, block_k=512)))
    _assert_close(got, ref, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype,types", [(torch.float32, [4, 0, 4]), (torch.float16, [0, 1, 0])])
def test_aggregation_kernel_qwen3_8b_shapes(dtype, types):
    """H=4096, m=5 (anchors [0,9,18,27,35]); only the types present have weights."""
    h, m = 4096, 5
    gen = torch.Generator().manual_seed(1)
    weight = torch.full((type_offset(h, m),), float("nan"), dtype=dtype)
    for a in set(types):
        start = type_offset(h, a)
        weight[start:start + (a + 1) * h * h] = (torch.randn((a + 1) * h * h, generator=gen) * 0.01).to(dtype)
    packed = PackedAggregation.from_buffer(weight.to(DEVICE), h, m)
    anchors = torch.randn(m, len(types), h, generator=gen).to(dtype).to(DEVICE)
    types = torch.tensor(types, device=DEVICE)
    ref = aggregate_anchors_reference(anchors, types, packed)
    got = aggregation_triton.aggregate_anchors_triton(anchors, types, packed,
                                                      **_blocks(dict(block_n=512, block_k=2048)))
    assert torch.isfinite(got).all()
    _assert_close(got, ref, dtype)


# --------------------------------------------------------------------------- draft head


def _head_case(h, k, rows, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(rows, h, generator=gen) * 3).to(dtype)
    norm_w = (1 + 0.1 * torch.randn(h, generator=gen)).to(dtype)
    lm_head = (torch.randn(k, h, generator=gen) / h ** 0.5).to(dtype)
    ids = torch.randperm(151936, generator=gen)[:k].sort().values  # sorted, like _draft_token_ids
    return [t.to(DEVICE) for t in (hidden, norm_w, lm_head, ids)]


def _assert_greedy(got_ids, ref_logits, draft_ids, dtype):
    """Same token as the reference, or (fp rounding near a tie) one whose reference logit
    is within tolerance of the maximum."""
    ref_ids = draft_ids[ref_logits.argmax(-1)]
    for r in torch.nonzero(got_ids != ref_ids).flatten().tolist():
        k = torch.searchsorted(draft_ids, got_ids[r]).item()
        assert draft_ids[k] == got_ids[r], "kernel returned an id outside the draft vocabulary"
        top = ref_logits[r].max().item()
        assert ref_logits[r, k].item() >= top - TOL[dtype] * max(abs(top), 1.0), (r, k)


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("h,k,rows,blocks", [
    (100, 1001, 1, dict(block_v=64, block_k=32)),
    (100, 1001, 7, dict(block_v=128, block_k=64)),
    (576, 8192, 4, dict(block_v=1024, block_k=1024)),  # SmolLM2-like
])
def test_draft_head_kernel_matches_reference(dtype, h, k, rows, blocks):
    hidden, norm_w, lm_head, ids = _head_case(h, k, rows, dtype)
    ref_logits = draft_logits_reference(hidden, norm_w, 1e-6, lm_head)
    got_ids = draft_head_triton.draft_greedy_triton(hidden, norm_w, 1e-6, lm_head, ids, **_blocks(blocks))
    assert got_ids.dtype == torch.int64 and got_ids.shape == (rows,)
    _assert_greedy(got_ids, ref_logits, ids, dtype)
    logits = draft_head_triton.draft_logits_triton(hidden, norm_w, 1e-6, lm_head, **_blocks(blocks))
    _assert_close(logits, ref_logits, torch.float32 if dtype == torch.float32 else dtype)


@needs_kernels
def test_draft_head_kernel_qwen3_8b_full_vocab():
    """H=4096, K=32000 greedy, fp16: the one full-size head launch (~15 s interpreted)."""
    hidden, norm_w, lm_head, ids = _head_case(4096, 32000, 1, torch.float16)
    got = draft_head_triton.draft_greedy_triton(hidden, norm_w, 1e-6, lm_head, ids,
                                                **_blocks(dict(block_v=1024, block_k=1024)))
    _assert_greedy(got, draft_logits_reference(hidden, norm_w, 1e-6, lm_head), ids, torch.float16)


@needs_kernels
def test_draft_head_kernel_qwen3_8b_reduced_vocab():
    hidden, norm_w, lm_head, ids = _head_case(4096, 2048, 3, torch.float32)
    blocks = _blocks(dict(block_v=512, block_k=2048))
    ref_logits = draft_logits_reference(hidden, norm_w, 1e-6, lm_head)
    _assert_greedy(draft_head_triton.draft_greedy_triton(hidden, norm_w, 1e-6, lm_head, ids, **blocks),
                   ref_logits, ids, torch.float32)
    _assert_close(draft_head_triton.draft_logits_triton(hidden, norm_w, 1e-6, lm_head, **blocks),
                  ref_logits, torch.float32)


def _tied_head(dtype):
    """Exact ties (two-term dot products, so no summation order): row 0 ties draft indices
    130, 140, 141 (one 64-wide vocab block) and 200 (the next); row 1 ties 7 and 290."""
    h, k = 16, 300
    lm_head = torch.zeros(k, h)
    lm_head[:, 2] = 1.0
    lm_head[[130, 140, 141, 200], 0] = 4.0
    lm_head[[7, 290], 1] = 4.0
    hidden = torch.zeros(2, h)
    hidden[0, 0] = hidden[1, 1] = 3.0
    hidden[:, 2] = 1.0
    ids = torch.arange(k) * 3 + 5
    return [t.to(dtype).to(DEVICE) if t.is_floating_point() else t.to(DEVICE)
            for t in (hidden, torch.ones(h), lm_head, ids)]


@pytest.mark.parametrize("use_kernel", [False, pytest.param(True, marks=needs_kernels)])
def test_draft_head_ties_pick_lowest_index(use_kernel):
    hidden, norm_w, lm_head, ids = _tied_head(torch.float32)
    if use_kernel:
        got = draft_head_triton.draft_greedy_triton(hidden, norm_w, 1e-6, lm_head, ids,
                                                    block_v=64, block_k=16)
    else:
        got, q = draft_head_reference(hidden, norm_w, 1e-6, lm_head, ids)
        assert q is None
    assert got.tolist() == [130 * 3 + 5, 7 * 3 + 5]


# --------------------------------------------------------------------------- sampling


def _logits_head(logits: torch.Tensor, rows: int):
    """A head whose draft logits are exactly ``logits[K]`` for each of ``rows`` rows
    (H=1, hidden 1, eps 0: the RMSNorm is the identity), so the sampling path of
    ``draft_head`` can be driven with chosen logits."""
    ids = torch.arange(logits.numel()) * 7 + 3
    return torch.ones(rows, 1), torch.ones(1), 0.0, logits.float().reshape(-1, 1), ids


def test_sampling_path_temperature_min_p_top_k_top_p_greedy():
    """The per-row parameters reach the warping (``verify.draft_proposal``) row by row."""
    hidden, norm_w, eps, lm_head, ids = _logits_head(torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0]), 5)
    s = DraftSampling(temperature=torch.tensor([1.0, 1.0, 0.5, 0.0, 1.0]),
                      top_k=torch.tensor([2, 3, 0, 1, 0]), top_p=torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0]),
                      min_p=torch.tensor([0.0, 0.0, 0.0, 0.0, 0.3]))
    assert torch.equal(draft_logits_reference(hidden, norm_w, eps, lm_head), lm_head.t().expand(5, -1))
    got, q = draft_head(hidden, norm_w, eps, lm_head, ids, s)
    assert q.shape == (5, 5) and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(-1), torch.ones(5))
    # top-k=2 keeps the tie at the k-th value (HF/vLLM): {0, 2, 3}; top-k=3 the same set.
    assert (q[0] > 0).tolist() == [True, False, True, True, False]
    torch.testing.assert_close(q[0], q[1])
    # T=0.5: p(0) = e^6 / (e^6 + 2 e^4 + e^2 + 1) ~ 0.78 >= top_p=0.5 -> only token 0.
    assert q[2].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert q[3].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # greedy row: one-hot at the argmax
    # min-p 0.3: p(x)/p(0) = e^(x-3) keeps 2, 2 (0.37) and drops 1 (0.14): the top-k=2 set.
    torch.testing.assert_close(q[4], q[0])
    assert got[2] == got[3] == ids[0]
    assert bool((q.gather(1, torch.searchsorted(ids, got)[:, None]) > 0).all())
    plain = draft_head(hidden[:1], norm_w, eps, lm_head, ids, DraftSampling(temperature=torch.tensor([2.0])))[1]
    torch.testing.assert_close(plain, (lm_head.t() / 2).softmax(-1))


def _chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat.double() / 2).item()


@pytest.mark.parametrize("seeded", [False, True])
def test_sampled_tokens_follow_q(seeded):
    """Histogram of draws from one row's q (replicated over many rows) against q."""
    torch.manual_seed(1234)
    k, n = 24, 20000 if not seeded else 4000
    hidden, norm_w, lm_head, ids = [t.cpu() for t in _head_case(32, k, 1, torch.float32, seed=3)]
    lm_head = lm_head * 0.5  # flat enough that top-k (24 -> 10) and top-p (-> 9) both cut
    sampling = DraftSampling(temperature=torch.full((n,), 0.9), top_k=torch.full((n,), 10),
                             top_p=torch.full((n,), 0.9),
                             generators={r: torch.Generator().manual_seed(r) for r in range(n)} if seeded else {})
    got, q = draft_head_reference(hidden.expand(n, -1), norm_w, 1e-6, lm_head, ids, sampling)
    assert torch.equal(q, q[:1].expand(n, -1))
    draft_idx = torch.searchsorted(ids, got)
    assert torch.equal(ids[draft_idx], got)
    counts = torch.bincount(draft_idx, minlength=k).double()
    assert counts[q[0] == 0].sum() == 0, "sampled a token that top-k/top-p removed"
    assert 2 <= int((q[0] > 0).sum()) < 10
    assert _chi_square_pvalue(counts, q[0].double()) > 1e-3


def test_seeded_sampling_reproducible_and_batch_independent():
    hidden, norm_w, lm_head, ids = [t.cpu() for t in _head_case(32, 50, 4, torch.float32, seed=5)]

    def run(rows, global_seed):
        torch.manual_seed(global_seed)
        sampling = DraftSampling(temperature=torch.ones(len(rows)),
                                 generators={i: torch.Generator().manual_seed(100 + r) for i, r in enumerate(rows)})
        return draft_head_reference(hidden[rows], norm_w, 1e-6, lm_head, ids, sampling)[0]

    first = run([0, 1, 2, 3], global_seed=0)
    assert torch.equal(run([0, 1, 2, 3], global_seed=99), first)  # global RNG state: no effect
    assert run([2], global_seed=7).item() == first[2].item()  # batch neighbours: no effect


@pytest.mark.parametrize("seeded", [False, True])
def test_one_hot_rows_always_draw_their_token(seeded):
    """Greedy rows and sampled rows whose warping leaves one token (top-k 1, min-p 1, a
    top-p the top token covers) get a one-hot q at the argmax and draw it, every time;
    greedy ties go to the lowest draft index."""
    hidden, norm_w, eps, lm_head, ids = _logits_head(torch.tensor([0.5, 4.0, -1.0, 3.9, 2.0, 0.0]), 4 * 200)
    reps = 200
    s = DraftSampling(temperature=torch.tensor([0.0, 1.0, 1.0, 0.2] * reps),
                      top_k=torch.tensor([0, 1, 0, 0] * reps), top_p=torch.tensor([1.0, 1.0, 1.0, 0.4] * reps),
                      min_p=torch.tensor([0.0, 0.0, 1.0, 0.0] * reps),
                      generators={r: torch.Generator().manual_seed(r) for r in range(4 * reps)} if seeded else {})
    got, q = draft_head(hidden, norm_w, eps, lm_head, ids, s)
    one_hot = torch.zeros(6)
    one_hot[1] = 1.0
    assert torch.equal(q, one_hot.expand(4 * reps, -1))
    assert torch.equal(got, ids[1].expand(4 * reps))
    # Greedy rows in a sampled batch: one-hot at the lowest tied index (1, not 3).
    hidden, norm_w, eps, lm_head, ids = _logits_head(torch.tensor([0.5, 4.0, -1.0, 4.0, 2.0, 0.0]), 2)
    got, q = draft_head(hidden, norm_w, eps, lm_head, ids, DraftSampling(temperature=torch.tensor([0.0, 1.0])))
    assert q[0].tolist() == one_hot.tolist() and got[0] == ids[1]


@needs_kernels
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_sampling_path_kernel_logits_match_reference(dtype):
    hidden, norm_w, lm_head, ids = _head_case(100, 1001, 5, dtype)
    sampling = DraftSampling(temperature=torch.tensor([0.7, 0.0, 1.0, 1.3, 0.5], device=DEVICE),
                             top_k=torch.tensor([0, 5, 50, 0, 1000], device=DEVICE),
                             top_p=torch.tensor([0.9, 1.0, 1.0, 0.5, 0.95], device=DEVICE),
                             min_p=torch.tensor([0.0, 0.0, 0.05, 0.0, 0.1], device=DEVICE))
    ref_logits = draft_logits_reference(hidden, norm_w, 1e-6, lm_head)
    q_ref = target_probs(ref_logits, sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)
    torch.testing.assert_close(draft_head_reference(hidden, norm_w, 1e-6, lm_head, ids, sampling)[1], q_ref,
                               rtol=0, atol=0)
    got_ids, q = draft_head(hidden, norm_w, 1e-6, lm_head, ids, sampling, backend="triton")
    assert q.shape == (5, 1001) and q.dtype == torch.float32
    torch.testing.assert_close(q, q_ref, rtol=0, atol=TOL[dtype])
    assert bool((q.gather(1, torch.searchsorted(ids, got_ids)[:, None]) > 0).all())
    assert got_ids[1] == ids[q_ref[1].argmax()]  # greedy row


# --------------------------------------------------------------------------- dispatch


def test_dispatch_picks_reference_on_cpu(monkeypatch):
    cpu = torch.zeros(1)
    assert resolve_backend(cpu) == "torch"
    monkeypatch.setenv("VLLM_SPD_KERNELS", "torch")
    assert resolve_backend(cpu.to(DEVICE)) == "torch"
    monkeypatch.setenv("VLLM_SPD_KERNELS", "triton")
    assert resolve_backend(cpu) == "triton"
    assert resolve_backend(cpu, backend="torch") == "torch"
    monkeypatch.setenv("VLLM_SPD_KERNELS", "fast")
    with pytest.raises(ValueError):
        resolve_backend(cpu)
    monkeypatch.delenv("VLLM_SPD_KERNELS")
    # CPU tensors through the public entry points: the reference, no triton needed.
    anchors, types, packed, _ = _aggregation_case(8, 2, [1, 0], torch.float32)
    if DEVICE == "cpu":
        torch.testing.assert_close(aggregate_anchors(anchors, types, packed),
                                   aggregate_anchors_reference(anchors, types, packed))
        hidden, norm_w, lm_head, ids = _head_case(16, 40, 2, torch.float32)
        assert torch.equal(draft_head(hidden, norm_w, 1e-6, lm_head, ids)[0],
                           draft_head_reference(hidden, norm_w, 1e-6, lm_head, ids)[0])


@needs_kernels
def test_dispatch_forced_triton_runs_kernels():
    anchors, types, packed, _ = _aggregation_case(100, 3, [2, 0, 1], torch.float32)
    got = aggregate_anchors(anchors, types, packed, backend="triton")
    _assert_close(got, aggregate_anchors_reference(anchors, types, packed), torch.float32)
    hidden, norm_w, lm_head, ids = _head_case(100, 300, 2, torch.float32)
    got_ids, q = draft_head(hidden, norm_w, 1e-6, lm_head, ids, backend="triton")
    assert q is None
    _assert_greedy(got_ids, draft_logits_reference(hidden, norm_w, 1e-6, lm_head), ids, torch.float32)


# --------------------------------------------------------------------------- GPU only


@needs_gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_gpu_bf16_qwen3_8b_shapes(batch):
    """Production shapes and dtype: m=5 steady state (one row per type per request)."""
    dtype = torch.bfloat16
    anchors, types, packed, _ = _aggregation_case(4096, 5, [4, 3, 2, 1, 0] * batch, dtype)
    _assert_close(aggregate_anchors(anchors, types, packed),
                  aggregate_anchors_reference(anchors, types, packed), dtype)
    hidden, norm_w, lm_head, ids = _head_case(4096, 32000, batch, dtype)
    ref_logits = draft_logits_reference(hidden, norm_w, 1e-6, lm_head)
    got_ids, _ = draft_head(hidden, norm_w, 1e-6, lm_head, ids)
    _assert_greedy(got_ids, ref_logits, ids, dtype)
    _assert_close(draft_head_triton.draft_logits_triton(hidden, norm_w, 1e-6, lm_head), ref_logits, dtype)


@needs_gpu
def test_gpu_cuda_graph_capture():
    """Greedy path (aggregation + head) captured once, replayed on new inputs."""
    dtype = torch.bfloat16
    anchors, types, packed, _ = _aggregation_case(1024, 5, [4, 3, 2, 1, 0, 4, 0], dtype)
    hidden, norm_w, lm_head, ids = _head_case(1024, 5000, 7, dtype)

    def step():
        rows = aggregate_anchors(anchors, types, packed)
        return rows, draft_head(hidden + rows, norm_w, 1e-6, lm_head, ids)[0]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rows_out, ids_out = step()
    new = _aggregation_case(1024, 5, [4, 3, 2, 1, 0, 4, 0], dtype, seed=9)[0]
    anchors.copy_(torch.nan_to_num(new, nan=0.0))
    graph.replay()
    torch.cuda.synchronize()
    rows_eager, ids_eager = step()
    torch.testing.assert_close(rows_out, rows_eager, rtol=0, atol=0)
    assert torch.equal(ids_out, ids_eager)


# --------------------------------------------------------------------------- fallback


@pytest.mark.skipif(not (HAVE_TRITON and not KERNELS_HERE),
                    reason="kernels already ran in this process")
def test_kernels_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
