"""scheduler_backend.controller: the threshold stays bounded, follows a step change of load in one monotone run of
moves (no oscillation), holds inside the hysteresis band and for `dwell` iterations after each move."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.controller import ControllerSettings, ThresholdController

# Spelled out, so that tuning the defaults does not change what these tests pin.
SETTINGS = ControllerSettings(minimum=0.70, maximum=0.95, initial=0.80, step=0.05, smoothing=0.3, raise_above=4.0,
                              lower_below=1.0, dwell=3)
LOW, HIGH = 0, 10  # waiting requests: well below lower_below (1) and above raise_above (4)
QUEUES = st.lists(st.integers(0, 50), max_size=200)


def feed(controller: ThresholdController, queue_lengths: Sequence[int]) -> list[float]:
    return [controller.update(q) for q in queue_lengths]


def moves(thresholds: Sequence[float], start: float) -> list[float]:
    """The non-zero threshold changes, in order."""
    previous, changes = start, []
    for threshold in thresholds:
        if abs(threshold - previous) > 1e-12:
            changes.append(threshold - previous)
        previous = threshold
    return changes


def reversals(changes: Sequence[float]) -> int:
    return sum((a > 0) != (b > 0) for a, b in zip(changes, changes[1:]))


def non_decreasing(values: Sequence[float]) -> bool:
    return all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def non_increasing(values: Sequence[float]) -> bool:
    return all(b <= a + 1e-12 for a, b in zip(values, values[1:]))


@settings(max_examples=150, deadline=None)
@given(queue_lengths=QUEUES, adaptive=st.booleans())
def test_threshold_and_pressure_stay_bounded_for_any_load(queue_lengths: list[int], adaptive: bool) -> None:
    controller = ThresholdController(SETTINGS, adaptive)
    for q in queue_lengths:
        threshold = controller.update(q)
        assert threshold == controller.threshold
        assert SETTINGS.minimum - 1e-12 <= threshold <= SETTINGS.maximum + 1e-12
        assert 0.0 <= controller.load_pressure <= 1.0


def test_a_step_change_of_load_gives_one_monotone_run_per_segment_to_the_bound() -> None:
    controller = ThresholdController(SETTINGS)
    segments = [[LOW] * 60, [HIGH] * 60, [LOW] * 60]
    start = controller.threshold
    for queue_lengths, bound in zip(segments, (SETTINGS.minimum, SETTINGS.maximum, SETTINGS.minimum)):
        thresholds = feed(controller, queue_lengths)
        changes = moves(thresholds, start)
        assert changes and reversals(changes) == 0  # it moves, and only one way
        assert (non_increasing if bound == SETTINGS.minimum else non_decreasing)([start, *thresholds])
        assert thresholds[-1] == pytest.approx(bound)
        assert all(abs(change) == pytest.approx(SETTINGS.step) for change in changes[:-1])
        assert 0 < abs(changes[-1]) <= SETTINGS.step + 1e-12  # the last move may be clipped at the bound
        start = thresholds[-1]


@settings(max_examples=100, deadline=None)
@given(before=st.integers(0, 12), after=st.integers(0, 12))
def test_from_a_settled_load_a_step_change_moves_one_way_only(before: int, after: int) -> None:
    controller = ThresholdController(SETTINGS)
    feed(controller, [before] * 80)
    start = controller.threshold
    thresholds = feed(controller, [after] * 80)
    assert reversals(moves(thresholds, start)) == 0
    if after > SETTINGS.raise_above:
        assert thresholds[-1] == pytest.approx(SETTINGS.maximum)
    elif after < SETTINGS.lower_below:
        assert thresholds[-1] == pytest.approx(SETTINGS.minimum)
    else:
        assert thresholds[-1] == pytest.approx(start) or not moves(thresholds[20:], thresholds[19])


def test_inside_the_hysteresis_band_the_threshold_holds() -> None:
    controller = ThresholdController(replace(SETTINGS, initial=0.85, dwell=0))
    feed(controller, [3] * 5)  # the smoothed load climbs from 0 into the band [1, 4]
    assert SETTINGS.lower_below <= controller.smoothed_load <= SETTINGS.raise_above
    held = controller.threshold
    assert feed(controller, [3, 2, 3, 2] * 25) == [held] * 100


def test_after_a_move_the_threshold_holds_for_dwell_iterations() -> None:
    for dwell in (0, 1, 3, 5):
        controller = ThresholdController(replace(SETTINGS, dwell=dwell))
        thresholds = feed(controller, [HIGH] * 40)
        moved_at = [i for i, (a, b) in enumerate(zip([SETTINGS.initial, *thresholds], thresholds))
                    if b != a]
        assert moved_at[0] == 1  # smoothed loads 3 (in the band: hold), then 5.1 (above it: raise)
        assert all(later - earlier == dwell + 1 for earlier, later in zip(moved_at, moved_at[1:]))


def test_the_smoothed_load_is_an_exponential_moving_average() -> None:
    controller = ThresholdController(replace(SETTINGS, smoothing=0.5))
    feed(controller, [8, 0, 4])
    assert controller.smoothed_load == pytest.approx(((0.5 * 8) * 0.5 + 0) * 0.5 + 0.5 * 4)


def test_load_pressure_is_zero_below_the_band_one_above_it_and_linear_between() -> None:
    for smoothing_target, pressure in ((0.5, 0.0), (1.0, 0.0), (2.5, 0.5), (4.0, 1.0), (9.0, 1.0)):
        controller = ThresholdController(replace(SETTINGS, smoothing=1.0))
        controller.update(smoothing_target)  # type: ignore[arg-type]  # a smoothed load, not a count
        assert controller.load_pressure == pytest.approx(pressure)


@settings(max_examples=50, deadline=None)
@given(queue_lengths=QUEUES)
def test_a_fixed_threshold_never_moves_but_still_measures_pressure(queue_lengths: list[int]) -> None:
    fixed, adaptive = ThresholdController(SETTINGS, adaptive=False), ThresholdController(SETTINGS)
    for q in queue_lengths:
        assert fixed.update(q) == SETTINGS.initial
        adaptive.update(q)
        assert fixed.load_pressure == adaptive.load_pressure


@pytest.mark.parametrize("changes", [
    {"minimum": 0.0}, {"minimum": 0.9, "initial": 0.8}, {"maximum": 1.1}, {"initial": 0.99},
    {"smoothing": 0.0}, {"smoothing": 1.5}, {"step": 0.0}, {"dwell": -1},
    {"lower_below": 4.0}, {"lower_below": -1.0},
])
def test_inconsistent_settings_are_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(SETTINGS, **changes)
