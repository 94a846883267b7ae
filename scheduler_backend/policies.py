"""Serving policies by name: one switch (the `policy` parameter of the `diffusion` model)."""

from __future__ import annotations

from scheduler_backend.limits import Limits
from scheduler_backend.planner import ContinuousPlanner, Planner, SequentialPlanner

POLICIES = ("sequential", "continuous")


def make_planner(policy: str, limits: Limits) -> Planner:
    if policy == "sequential":
        return SequentialPlanner()
    if policy == "continuous":
        return ContinuousPlanner(limits.max_running_requests)
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
