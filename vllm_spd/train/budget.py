"""Fitting a training run's length to a wall-clock budget (``--time-budget``).

A GPU is often lent for a fixed time, and a run cut off by the clock ends with its
learning rate mid-decay. ``--time-budget`` instead plans the step count when warm-up
ends: from the time per step and per evaluation seen so far, the most steps that end
inside the budget become the schedule's total. The trainer plans again at every
checkpoint from all the time the loop has taken (checkpoints cost time the first plan
cannot see), and each plan decays the learning rate linearly from its present value.
"""

from __future__ import annotations


def evaluations(step: int, total: int, eval_every: int) -> int:
    """Held-out evaluations a run makes after ``step`` up to ``total``: one at every
    multiple of ``eval_every`` and one at the end."""
    if total <= step:
        return 0
    every = total // eval_every - step // eval_every
    return every + (total % eval_every != 0)


def fit_steps(budget_s: float, spent_s: float, step: int, step_s: float, eval_s: float, eval_every: int,
              max_steps: int, margin: float = 0.03) -> int:
    """The most total steps N, ``step <= N <= max_steps``, with which a run that has spent
    ``spent_s`` seconds by ``step`` ends within ``budget_s`` less a ``margin`` share:
    ``spent + (N - step) * step_s + evaluations(step, N) * eval_s <= budget * (1 - margin)``.
    ``step`` itself when not even one more step fits."""
    if budget_s <= 0 or step_s <= 0 or eval_every <= 0:
        raise ValueError(f"fit_steps: budget_s {budget_s}, step_s {step_s} and eval_every {eval_every} "
                         f"must be positive")
    room = budget_s * (1.0 - margin) - spent_s

    def fits(n: int) -> bool:
        return (n - step) * step_s + evaluations(step, n, eval_every) * eval_s <= room

    lo, hi = step, max(step, max_steps)   # fits(lo) by convention; the cost grows with n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
