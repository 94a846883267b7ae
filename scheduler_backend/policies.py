"""Serving policies by name: one switch (the `policy` parameter of the `diffusion` model).

* ``sequential``: one request at a time, start to finish (a plain diffusers pipeline);
* ``static``: whole requests batched as Triton's dynamic batcher would (lockstep, decode at the end);
* ``continuous``: step-level join/leave, whole decodes beside the UNet, no Skip-CFG (InstGenIE-like);
* ``synerdiff``: the threshold-aware planner with VAE chunks, adaptive Skip-CFG and the controller;
* ablations, each removing one mechanism: ``synerdiff-no-chunking`` (whole decodes),
  ``synerdiff-no-skip-cfg``, ``synerdiff-fixed-threshold`` (the controller never moves θ),
  ``synerdiff-greedy`` (greedy chunk packing instead of the table search).
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler_backend.controller import ControllerSettings, ThresholdController
from scheduler_backend.limits import Limits
from scheduler_backend.planner import ContinuousPlanner, Planner, SequentialPlanner, StaticPlanner
from scheduler_backend.profile import LatencyProfile
from scheduler_backend.skip_cfg import SkipCfgPolicy
from scheduler_backend.synerdiff_planner import SynerDiffOptions, SynerDiffPlanner
from scheduler_backend.vae_chunks import ChunkingSpec

BASELINES = ("sequential", "static", "continuous")
ABLATIONS = ("synerdiff-no-chunking", "synerdiff-no-skip-cfg", "synerdiff-fixed-threshold", "synerdiff-greedy")
POLICIES = (*BASELINES, "synerdiff", *ABLATIONS)
WHOLE = ChunkingSpec("whole")


@dataclass(frozen=True)
class PolicySettings:
    """The knobs of the SynerDiff mechanisms (the `diffusion` model's parameters)."""

    vae_chunking: ChunkingSpec = ChunkingSpec("stages")
    skip_cfg: SkipCfgPolicy = SkipCfgPolicy()
    controller: ControllerSettings = ControllerSettings()
    static_max_queue_delay_s: float = 0.05


@dataclass
class ServingPolicy:
    name: str
    planner: Planner
    chunking: ChunkingSpec = WHOLE
    skip_cfg: SkipCfgPolicy | None = None

    @property
    def needs_profile(self) -> bool:
        return needs_profile(self.name)


def needs_profile(policy: str) -> bool:
    return policy.startswith("synerdiff")


def make_policy(name: str, limits: Limits, profile: LatencyProfile | None = None,
                settings: PolicySettings = PolicySettings()) -> ServingPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name == "sequential":
        return ServingPolicy(name, SequentialPlanner())
    if name == "static":
        return ServingPolicy(name, StaticPlanner(limits.max_running_requests, settings.static_max_queue_delay_s))
    if name == "continuous":
        return ServingPolicy(name, ContinuousPlanner(limits.max_running_requests))
    if profile is None:
        raise ValueError(f"policy {name!r} needs a latency profile (run `synerdiff profile`)")
    controller = ThresholdController(settings.controller, adaptive=name != "synerdiff-fixed-threshold")
    options = SynerDiffOptions(skip_cfg=name != "synerdiff-no-skip-cfg",
                               search="greedy" if name == "synerdiff-greedy" else "dp")
    return ServingPolicy(
        name,
        SynerDiffPlanner(profile, controller, limits.max_running_requests, options),
        chunking=WHOLE if name == "synerdiff-no-chunking" else settings.vae_chunking,
        skip_cfg=settings.skip_cfg if options.skip_cfg else None,
    )
