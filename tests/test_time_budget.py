"""--time-budget's planning: the step count fitted to a wall-clock budget. The tiny
training run on a fake clock is in test_train.py, beside the trainer's other runs."""

import pytest

from vllm_spd.train import budget


def test_evaluations_count_the_multiples_and_the_end():
    assert budget.evaluations(0, 100, 50) == 2        # at 50 and at 100 (the end is a multiple)
    assert budget.evaluations(0, 120, 50) == 3        # 50, 100 and the end
    assert budget.evaluations(10, 40, 50) == 1        # the end only
    assert budget.evaluations(50, 50, 50) == 0        # nothing left to run
    assert budget.evaluations(49, 50, 50) == 1


def _cost(step, n, step_s, eval_s, every):
    return (n - step) * step_s + budget.evaluations(step, n, every) * eval_s


@pytest.mark.parametrize("spent,step_s,eval_s,every", [(12.0, 0.5, 3.0, 40), (0.0, 1.0, 0.0, 7), (30.0, 0.2, 9.0, 25)])
def test_fit_steps_is_the_longest_run_inside_the_budget(spent, step_s, eval_s, every):
    budget_s, step, most = 100.0, 10, 10_000
    n = budget.fit_steps(budget_s, spent, step, step_s, eval_s, every, most, margin=0.0)
    assert step < n < most
    assert spent + _cost(step, n, step_s, eval_s, every) <= budget_s
    assert spent + _cost(step, n + 1, step_s, eval_s, every) > budget_s   # one more step would not fit


def test_fit_steps_bounds_and_margin():
    # Plenty of time: the given most steps; none left: stop where the run is.
    assert budget.fit_steps(1e9, 0.0, 10, 1.0, 1.0, 50, 500) == 500
    assert budget.fit_steps(10.0, 20.0, 10, 1.0, 1.0, 50, 500) == 10
    # The margin keeps that share of the budget free.
    assert budget.fit_steps(100.0, 0.0, 0, 1.0, 0.0, 10_000, 10_000, margin=0.1) == 90
    with pytest.raises(ValueError, match="must be positive"):
        budget.fit_steps(100.0, 0.0, 0, 0.0, 0.0, 10, 100)
