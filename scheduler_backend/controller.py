"""The feedback controller: moves the UNet throughput threshold with the smoothed queue load.

Each iteration it reads the waiting-queue length q and smooths it, q̄ <- α q + (1 - α) q̄. With
hysteresis bands it moves the threshold θ additively:
* q̄ > raise_above: θ <- min(θ + step, maximum)  (the queue grows: throughput first);
* q̄ < lower_below: θ <- max(θ - step, minimum)  (the queue drains: latency first);
* in between: θ holds.
After each move it holds θ for `dwell` iterations, so one move's effect on the queue is seen before
the next. Bounded by construction; for a constant load it moves monotonically to a bound or into the
band and stays there, so a step change of load gives at most one monotone run of moves (no oscillation;
tests/unit/test_controller.py and docs/perf.md show it).

`load_pressure` (0 when q̄ <= lower_below, 1 when q̄ >= raise_above, linear between) rations Skip-CFG.
`adaptive=False` is the fixed-threshold ablation: same smoothing and pressure, θ never moves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControllerSettings:
    minimum: float = 0.70
    maximum: float = 0.90
    initial: float = 0.80
    step: float = 0.05
    smoothing: float = 0.1  # α of the exponentially weighted moving average (about 10 iterations)
    raise_above: float = 4.0  # smoothed waiting requests
    lower_below: float = 1.0
    dwell: int = 10  # iterations θ holds after a move

    def __post_init__(self) -> None:
        if not 0.0 < self.minimum <= self.initial <= self.maximum <= 1.0:
            raise ValueError("need 0 < minimum <= initial <= maximum <= 1")
        if not 0.0 < self.smoothing <= 1.0 or self.step <= 0 or self.dwell < 0:
            raise ValueError("need 0 < smoothing <= 1, step > 0 and dwell >= 0")
        if not 0.0 <= self.lower_below < self.raise_above:
            raise ValueError("need 0 <= lower_below < raise_above")


class ThresholdController:
    def __init__(self, settings: ControllerSettings = ControllerSettings(), adaptive: bool = True) -> None:
        self.settings = settings
        self.adaptive = adaptive
        self.threshold = settings.initial
        self.smoothed_load = 0.0
        self._hold = 0

    @property
    def load_pressure(self) -> float:
        s = self.settings
        return min(1.0, max(0.0, (self.smoothed_load - s.lower_below) / (s.raise_above - s.lower_below)))

    def update(self, queue_length: int) -> float:
        """Feed one iteration's waiting-queue length; returns the threshold to plan with."""
        s = self.settings
        self.smoothed_load = s.smoothing * queue_length + (1 - s.smoothing) * self.smoothed_load
        if not self.adaptive:
            return self.threshold
        if self._hold > 0:
            self._hold -= 1
            return self.threshold
        if self.smoothed_load > s.raise_above and self.threshold < s.maximum:
            self.threshold = min(s.maximum, self.threshold + s.step)
            self._hold = s.dwell
        elif self.smoothed_load < s.lower_below and self.threshold > s.minimum:
            self.threshold = max(s.minimum, self.threshold - s.step)
            self._hold = s.dwell
        return self.threshold

