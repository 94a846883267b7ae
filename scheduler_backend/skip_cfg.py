"""Adaptive Skip-CFG: on some late steps, run only a guided request's conditional UNet row.

With classifier-free guidance a request costs two UNet rows per step (unconditional, conditional).
Skipping the unconditional row for one step halves that step's cost and uses the conditional
prediction as the noise estimate. Late denoising steps refine detail and depend little on guidance
(Adaptive Guidance, arXiv 2312.12487; Step AG, arXiv 2506.08351), so skipping is allowed only
* inside a late-step window: step index >= ceil(window_start x num_steps), and
* within a per-request budget: at most floor(budget_fraction x num_steps) skipped steps.
Defaults (0.6, 0.3): the first 60 % of the steps always keep guidance, and at most 30 % of all steps
skip, that is at most three quarters of the window. Whether an eligible step really skips is the
planner's choice, rationed by load (`skip_allowance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SkipCfgPolicy:
    window_start: float = 0.6
    budget_fraction: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.window_start <= 1.0 or not 0.0 <= self.budget_fraction <= 1.0:
            raise ValueError("window_start and budget_fraction must lie in [0, 1]")

    def budget(self, num_steps: int) -> int:
        return math.floor(self.budget_fraction * num_steps)

    def first_eligible_step(self, num_steps: int) -> int:
        return math.ceil(self.window_start * num_steps)

    def eligible(self, step_index: int, num_steps: int, skipped: int) -> bool:
        """May the step `step_index` (0-based) of a guided request skip its unconditional row?"""
        return (self.first_eligible_step(num_steps) <= step_index < num_steps
                and skipped < self.budget(num_steps))


def skip_allowance(eligible: int, load_pressure: float) -> int:
    """How many of `eligible` rows may skip this iteration: none when idle, all under full pressure."""
    return min(eligible, max(0, math.floor(load_pressure * eligible + 0.5)))
