"""A discrete-event simulator: the real engine and planners on a virtual clock, timed by a latency profile.

The engine, the planners, the sampler and the VAE chunking run unchanged; only the executor is
simulated (`SimulatedExecutor` returns zeros of the right shapes at once) and time is virtual: after
each iteration the clock advances by what the profile says that iteration's work costs — the UNet calls
and the beside lane overlapping under the profile's contention model, then the after lane. Optional
multiplicative log-normal noise (seeded) stands for run-to-run jitter. Deterministic for a seed.

What it measures per request: arrival, admission is implicit, completion (at the end of the iteration
that produced the image), outcome (image, or rejected by the bounded queue).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from perf.report import RequestRecord
from perf.workload import Arrival
from scheduler_backend.engine import Engine, RequestFinished, StepReport
from scheduler_backend.errors import Overloaded
from scheduler_backend.limits import Limits, ModelSpec
from scheduler_backend.policies import PolicySettings, make_policy
from scheduler_backend.profile import LatencyProfile, overlap
from scheduler_backend.request import GenerationParams
from scheduler_backend.sampler import NoiseSchedule, SamplerKind
from scheduler_backend.vae_chunks import StageShapes

TEXT_LENGTH, TEXT_WIDTH = 77, 8  # the simulated executor never reads embeddings: keep them small


@dataclass
class SimulatedExecutor:
    """Returns zeros of the shapes the real models would return."""

    spec: ModelSpec

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        return np.zeros_like(samples)

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        f = self.spec.vae_scale_factor
        return np.zeros((latents.shape[0], 3, latents.shape[2] * f, latents.shape[3] * f), np.float32)

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        stages = self.spec.vae_stages
        assert stages is not None
        grow = stages.scales[stage] // (stages.scales[stage - 1] if stage else 1)
        return np.zeros((hidden.shape[0], stages.channels[stage], hidden.shape[2] * grow, hidden.shape[3] * grow),
                        np.float32)


@dataclass
class IterationClock:
    """The virtual duration of an iteration, from the profile (the simulated machine's truth)."""

    profile: LatencyProfile
    noise: float = 0.0  # sigma of a log-normal factor per call
    seed: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _jitter(self) -> float:
        return math.exp(self._rng.gauss(0.0, self.noise)) if self.noise else 1.0

    def seconds(self, report: StepReport) -> float:
        profile = self.profile
        unet_s = sum(profile.unet_call_seconds(w.rows, profile.area_ratio(w.latent_shape[1:])) * self._jitter()
                     for w in report.unet_work)
        beside_s = sum(self._chunk(c.kind, c.latent_shape) for c in report.chunks_beside)
        after_s = sum(self._chunk(c.kind, c.latent_shape) for c in report.chunks_after)
        contention = profile.worst_contention({c.kind for c in report.chunks_beside})
        return max(overlap(unet_s, beside_s, contention)) + after_s

    def _chunk(self, kind: str, latent_shape: Sequence[int]) -> float:
        return self.profile.chunk_seconds(kind, self.profile.area_ratio(latent_shape[1:])) * self._jitter()


@dataclass
class SimulationResult:
    policy: str
    records: list[RequestRecord]
    iterations: int
    skipped_cfg_rows: int
    unet_rows: int
    planning_s: list[float]  # wall-clock decision times of the planner
    thresholds: list[tuple[float, float]]  # (virtual time, θ) per iteration that had one
    end_s: float


SIMULATED_LATENT_SIDE = 4  # arrays stay tiny; costs come from the profile, rescaled to this side


def simulation_spec(stages: StageShapes | None) -> ModelSpec:
    side = SIMULATED_LATENT_SIDE * 8
    return ModelSpec(latent_channels=4, vae_scale_factor=8, text_max_length=TEXT_LENGTH, text_hidden_size=TEXT_WIDTH,
                     size_multiple=8, default_size=side, max_size=side, vae_stages=stages)


def at_simulated_size(profile: LatencyProfile) -> LatencyProfile:
    """The same costs, stated for the simulated latent size (every simulated request has that size)."""
    return replace(profile, latent_hw=(SIMULATED_LATENT_SIDE, SIMULATED_LATENT_SIDE))


def simulate(policy: str, arrivals: Sequence[Arrival], profile: LatencyProfile, *, truth: LatencyProfile | None = None,
             settings: PolicySettings = PolicySettings(), stages: StageShapes | None = None,
             max_waiting_requests: int = 256, max_running_requests: int = 16, noise: float = 0.0,
             seed: int = 0) -> SimulationResult:
    """Serve `arrivals` with `policy`, planning with `profile`; time runs by `truth` (default: the same)."""
    spec = simulation_spec(stages)
    limits = Limits(spec, max_waiting_requests=max_waiting_requests, max_running_requests=max_running_requests)
    serving = make_policy(policy, limits, at_simulated_size(profile), settings)
    clock = IterationClock(at_simulated_size(truth or profile), noise, seed)
    now = [0.0]
    engine = Engine(SimulatedExecutor(spec), serving.planner, limits, NoiseSchedule(), clock=lambda: now[0],
                    chunking=serving.chunking, skip_cfg=serving.skip_cfg)
    return asyncio.run(_run(policy, engine, arrivals, clock, now, spec))


async def _run(policy: str, engine: Engine, arrivals: Sequence[Arrival], clock: IterationClock, now: list[float],
               spec: ModelSpec) -> SimulationResult:
    embeddings = np.zeros((2, TEXT_LENGTH, TEXT_WIDTH), np.float32)
    pending = sorted(enumerate(arrivals), key=lambda item: item[1].time_s)
    records: dict[int, RequestRecord] = {}
    next_arrival = 0
    iterations = skipped = rows = 0
    planning: list[float] = []
    thresholds: list[tuple[float, float]] = []
    while next_arrival < len(pending) or engine.has_work:
        while next_arrival < len(pending) and pending[next_arrival][1].time_s <= now[0] + 1e-12:
            index, arrival = pending[next_arrival]
            next_arrival += 1
            try:
                engine.add(str(index), _params(arrival, index, spec), embeddings)
            except Overloaded:
                records[index] = RequestRecord(arrival.time_s, arrival.num_steps, arrival.guidance_scale > 1,
                                               None, None, "rejected")
        if not engine.has_work:
            now[0] = pending[next_arrival][1].time_s
            continue
        report = await engine.step()
        planning.append(report.planning_s)
        if report.threshold is not None:
            thresholds.append((now[0], report.threshold))
        if report.is_idle:
            wake = [pending[next_arrival][1].time_s] if next_arrival < len(pending) else []
            if report.retry_after_s is not None:
                wake.append(now[0] + report.retry_after_s)
            if not wake:
                raise RuntimeError(f"{policy}: the planner idles with work and nothing can wake it")
            now[0] = min(wake)
            continue
        iterations += 1
        skipped += report.skipped_cfg_rows
        rows += report.unet_rows
        now[0] += clock.seconds(report)
        for event in report.events:
            if isinstance(event, RequestFinished):
                index = int(event.request_id)
                arrival = arrivals[index]
                records[index] = RequestRecord(arrival.time_s, arrival.num_steps, arrival.guidance_scale > 1, None,
                                               now[0], "image" if event.image is not None else "error")
    assert len(records) == len(arrivals), "the simulation lost a request"
    return SimulationResult(policy, [records[i] for i in range(len(arrivals))], iterations, skipped, rows,
                            planning, thresholds, now[0])


def _params(arrival: Arrival, index: int, spec: ModelSpec) -> GenerationParams:
    return GenerationParams(prompts=None, num_steps=arrival.num_steps, guidance_scale=arrival.guidance_scale,
                            seed=index, height=spec.default_size, width=spec.default_size,
                            sampler=SamplerKind.DDIM, progress=False)
