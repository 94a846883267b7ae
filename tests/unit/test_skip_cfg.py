"""scheduler_backend.skip_cfg: the late-step window, the per-request budget, and load rationing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.skip_cfg import SkipCfgPolicy, skip_allowance

FRACTION = st.floats(0.0, 1.0)


def test_defaults_keep_guidance_for_the_first_sixty_percent_and_skip_at_most_thirty() -> None:
    policy = SkipCfgPolicy()
    assert (policy.first_eligible_step(20), policy.budget(20)) == (12, 6)
    assert [k for k in range(20) if policy.eligible(k, 20, 0)] == list(range(12, 20))
    assert not policy.eligible(19, 20, 6) and policy.eligible(19, 20, 5)
    assert (policy.first_eligible_step(7), policy.budget(7)) == (5, 2)  # ceil(4.2), floor(2.1)


@settings(max_examples=500, deadline=None)
@given(window_start=FRACTION, budget_fraction=FRACTION, num_steps=st.integers(1, 150),
       step_index=st.integers(-2, 160), skipped=st.integers(0, 160))
def test_a_step_is_eligible_only_inside_the_window_and_within_the_budget(
        window_start: float, budget_fraction: float, num_steps: int, step_index: int, skipped: int) -> None:
    policy = SkipCfgPolicy(window_start, budget_fraction)
    inside = window_start * num_steps <= step_index < num_steps
    within = skipped + 1 <= budget_fraction * num_steps  # this skip still fits the budget
    assert policy.eligible(step_index, num_steps, skipped) == (inside and within)


@settings(max_examples=300, deadline=None)
@given(window_start=FRACTION, budget_fraction=FRACTION, num_steps=st.integers(1, 150))
def test_skipping_every_eligible_step_stays_in_the_window_and_uses_the_budget(
        window_start: float, budget_fraction: float, num_steps: int) -> None:
    policy = SkipCfgPolicy(window_start, budget_fraction)
    skipped_steps: list[int] = []
    for step_index in range(num_steps):
        if policy.eligible(step_index, num_steps, len(skipped_steps)):
            skipped_steps.append(step_index)
    assert all(step >= window_start * num_steps for step in skipped_steps)
    assert len(skipped_steps) <= budget_fraction * num_steps
    window = num_steps - math.ceil(window_start * num_steps)
    assert len(skipped_steps) == min(window, math.floor(budget_fraction * num_steps))
    assert skipped_steps == sorted(skipped_steps) and skipped_steps == list(
        range(num_steps - window, num_steps - window + len(skipped_steps)))  # the earliest steps of the window


@pytest.mark.parametrize("window_start, budget_fraction", [(-0.1, 0.3), (1.1, 0.3), (0.6, -0.01), (0.6, 1.5)])
def test_fractions_outside_zero_one_are_rejected(window_start: float, budget_fraction: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SkipCfgPolicy(window_start, budget_fraction)


def test_a_zero_budget_never_skips() -> None:
    policy = SkipCfgPolicy(0.0, 0.0)
    assert not any(policy.eligible(k, 10, 0) for k in range(10))


# -- rationing by load -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(eligible=st.integers(0, 64), low=FRACTION, high=FRACTION)
def test_skip_allowance_is_bounded_and_monotone_in_pressure(eligible: int, low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert 0 <= skip_allowance(eligible, low) <= skip_allowance(eligible, high) <= eligible


@settings(max_examples=200, deadline=None)
@given(eligible=st.integers(0, 64), pressure=FRACTION)
def test_skip_allowance_grows_by_at_most_one_per_eligible_row(eligible: int, pressure: float) -> None:
    step = skip_allowance(eligible + 1, pressure) - skip_allowance(eligible, pressure)
    assert step in (0, 1)


@pytest.mark.parametrize("eligible", [0, 1, 2, 7, 64])
def test_no_skips_when_idle_and_every_eligible_row_under_full_pressure(eligible: int) -> None:
    assert skip_allowance(eligible, 0.0) == 0
    assert skip_allowance(eligible, 1.0) == eligible


def test_skip_allowance_rounds_to_the_nearest_row() -> None:
    assert [skip_allowance(4, p) for p in (0.1, 0.13, 0.25, 0.5, 0.74, 0.9)] == [0, 1, 1, 2, 3, 4]
