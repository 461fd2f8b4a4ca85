"""Keyed draws (``keyed_random.py``): a fixed function of (seed, position, purpose),
uniform, and unrelated across seeds, positions, purposes and indices."""

import torch

from vllm_spd.core import keyed_random as kr


def test_same_key_same_draw_other_key_other_draw():
    seed, pos = torch.tensor([7, 7, 8]), torch.tensor([100, 101, 100])
    a = kr.uniform(seed, pos, kr.SALT_ACCEPT)
    assert torch.equal(a, kr.uniform(seed, pos, kr.SALT_ACCEPT))
    assert len(set(a.tolist())) == 3
    assert not torch.equal(a, kr.uniform(seed, pos, kr.SALT_RESIDUAL))
    big = torch.tensor([(1 << 62) + 7])      # the high half of a 64-bit seed counts
    assert kr.uniform(big, pos[:1], 1) != kr.uniform(torch.tensor([7]), pos[:1], 1)


def _chi2_uniform(u: torch.Tensor, bins: int = 64) -> float:
    counts = torch.histc(u.float(), bins=bins, min=0.0, max=1.0).double()
    expected = u.numel() / bins
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((bins - 1) / 2.0), torch.tensor(stat / 2.0)))


def test_uniform_over_positions_seeds_and_indices():
    pos = torch.arange(20000)
    assert _chi2_uniform(kr.uniform(torch.zeros_like(pos), pos, kr.SALT_ACCEPT)) > 1e-3
    seeds = torch.arange(20000)
    assert _chi2_uniform(kr.uniform(seeds, torch.full_like(seeds, 5), kr.SALT_DRAFT)) > 1e-3
    wide = kr.uniform(torch.tensor([3, 4]), torch.tensor([9, 9]), kr.SALT_RESIDUAL, 10000)
    assert wide.shape == (2, 10000) and 0 < float(wide.min()) and float(wide.max()) < 1
    assert _chi2_uniform(wide.flatten()) > 1e-3
    # neighbouring draws are not correlated
    u = kr.uniform(torch.zeros_like(pos), pos, kr.SALT_ACCEPT)
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.03


def test_exponential_race_samples_the_distribution():
    """Sampling by the race argmax(p / E) with keyed E over many positions gives p."""
    from vllm_spd.core.verify import sample_from_probs

    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    pos = torch.arange(n)
    noise = kr.exponential(torch.full_like(pos, 11), pos, kr.SALT_RESIDUAL, 4)
    picks = sample_from_probs(p.expand(n, 4), noise=noise)
    freq = torch.bincount(picks, minlength=4).double() / n
    assert torch.allclose(freq, p.double(), atol=0.015), freq
