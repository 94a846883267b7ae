"""The generation engine: `add / abort / step()` around an `Executor`.

The engine owns every live request from admission to its final event. One `step()` is one iteration:
ask the planner for a `StepPlan`, run its UNet and VAE calls concurrently through the executor, then
apply the results (a sampler step per row, finished latents queued for decoding, decoded images
emitted). The Triton model supplies a BLS executor; tests and the simulator supply local ones.

Invariants:
- every request that `add` accepted ends with exactly one `RequestFinished` event (from `step`,
  `abort` or `fail_all`), and after it the engine holds nothing of that request;
- a failing model call fails only the requests it carried;
- a row's arithmetic never depends on the other rows of its batch, so the same request gives the same
  image alone or batched (the models are batch-invariant on ONNX Runtime CPU);
- `add` and `abort` may be called while a `step` awaits its executor (same event loop): a request
  added then waits for the next step; one aborted then is dropped when the step's results arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from scheduler_backend.errors import Cancelled, ExecutionFailed, Overloaded, SynerDiffError
from scheduler_backend.limits import Limits
from scheduler_backend.planner import Planner, RequestView, SchedulerView, StepPlan, UnetCall, VaeCall
from scheduler_backend.request import GenerationParams
from scheduler_backend.sampler import (NoiseSchedule, SamplerPlan, batched_step, guided_noise,
                                       initial_latent, make_sampler_plan)


class Executor(Protocol):
    """Runs the models. Implementations raise `ExecutionFailed` (or anything) when a call fails."""

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray,
                       text_embeddings: np.ndarray) -> np.ndarray:
        """[R, C, h, w] f32, [R] f32, [R, L, D] f32 -> noise prediction [R, C, h, w] f32."""
        ...

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        """[B, C, h, w] f32 raw latents -> images [B, 3, H, W] f32 in about [-1, 1]."""
        ...


@dataclass(frozen=True)
class StepProgress:
    request_id: str
    steps_done: int
    num_steps: int


@dataclass(frozen=True)
class RequestFinished:
    """The final event of a request: an image [H, W, 3] uint8, or the error that ended it."""

    request_id: str
    image: np.ndarray | None = None
    error: SynerDiffError | None = None


Event = StepProgress | RequestFinished


@dataclass(frozen=True)
class StepReport:
    """What one iteration did, for metrics and logs."""

    events: tuple[Event, ...]
    unet_rows: int = 0
    unet_calls: int = 0
    mixed_timestep_calls: int = 0  # UNet calls whose rows were at different timesteps
    vae_images: int = 0
    latency_s: float = 0.0

    @property
    def is_idle(self) -> bool:
        return not (self.events or self.unet_calls or self.vae_images)


@dataclass(eq=False)
class _Generation:
    request_id: str
    params: GenerationParams
    sampler_plan: SamplerPlan
    text_embeddings: np.ndarray  # [rows, L, D]: (unconditional, prompt) with CFG, else (prompt,)
    latent: np.ndarray
    arrived_s: float
    steps_done: int = 0

    @property
    def unet_rows(self) -> int:
        return self.text_embeddings.shape[0]

    def view(self) -> RequestView:
        return RequestView(self.request_id, tuple(self.latent.shape), self.unet_rows, self.steps_done,
                           self.params.num_steps)


@dataclass
class _Queues:
    waiting: deque[_Generation] = field(default_factory=deque)
    denoising: list[_Generation] = field(default_factory=list)
    decode_ready: list[_Generation] = field(default_factory=list)


class Engine:
    def __init__(self, executor: Executor, planner: Planner, limits: Limits, schedule: NoiseSchedule,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._executor = executor
        self._planner = planner
        self._limits = limits
        self._schedule = schedule
        self._clock = clock
        self._queues = _Queues()
        self._live: dict[str, _Generation] = {}

    # -- the request side ---------------------------------------------------------------------------

    def add(self, request_id: str, params: GenerationParams, text_embeddings: np.ndarray) -> None:
        """Queue a validated request. `text_embeddings` is [2, L, D]: (unconditional, prompt).

        Raises `Overloaded` when the waiting queue is full; the request is then not held.
        """
        if request_id in self._live:
            raise ValueError(f"request id {request_id!r} is already live")
        self.ensure_capacity()
        sampler_plan = make_sampler_plan(params.sampler, self._schedule, params.num_steps)
        shape = self._limits.model.latent_shape(params.height, params.width)
        rows = text_embeddings if params.uses_cfg else text_embeddings[1:]
        generation = _Generation(
            request_id=request_id, params=params, sampler_plan=sampler_plan,
            text_embeddings=np.ascontiguousarray(rows, dtype=np.float32),
            latent=initial_latent(params.seed, shape, sampler_plan.init_noise_sigma),
            arrived_s=self._clock())
        self._queues.waiting.append(generation)
        self._live[request_id] = generation

    def ensure_capacity(self, reserved: int = 0) -> None:
        """Raise `Overloaded` unless the waiting queue has room beyond `reserved` places (requests the
        caller has accepted but not added yet)."""
        if len(self._queues.waiting) + reserved >= self._limits.max_waiting_requests:
            raise Overloaded(f"the waiting queue is full ({self._limits.max_waiting_requests} requests)")

    def abort(self, request_id: str, reason: SynerDiffError | None = None) -> RequestFinished | None:
        """Drop a live request at once; returns its final event, or None if it is not live."""
        generation = self._live.pop(request_id, None)
        if generation is None:
            return None
        queues = self._queues
        if generation in queues.waiting:
            queues.waiting.remove(generation)
        for queue in (queues.denoising, queues.decode_ready):
            if generation in queue:
                queue.remove(generation)
        return RequestFinished(request_id, error=reason or Cancelled("request cancelled"))

    def fail_all(self, error: SynerDiffError) -> list[RequestFinished]:
        """End every live request with `error` (shutdown, loop failure)."""
        return [event for request_id in list(self._live) if (event := self.abort(request_id, error))]

    # -- introspection ------------------------------------------------------------------------------

    @property
    def live_request_ids(self) -> tuple[str, ...]:
        return tuple(self._live)

    @property
    def num_waiting(self) -> int:
        return len(self._queues.waiting)

    @property
    def num_denoising(self) -> int:
        return len(self._queues.denoising)

    @property
    def num_decode_ready(self) -> int:
        return len(self._queues.decode_ready)

    @property
    def has_work(self) -> bool:
        return bool(self._live)

    # -- one iteration ------------------------------------------------------------------------------

    async def step(self) -> StepReport:
        started_s = self._clock()
        plan = self._planner.plan(self._view())
        if plan.is_idle:
            return StepReport(events=())
        self._admit(plan.admit)
        unet_batches = [self._resolve(call.request_ids) for call in plan.unet_calls]
        vae_batches = [self._resolve(call.request_ids) for call in plan.vae_calls]
        for batch in vae_batches:  # taken now, so a decode is never planned twice
            for generation in batch:
                self._queues.decode_ready.remove(generation)
        mixed_timestep_calls = sum(_mixed_timesteps(batch) for batch in unet_batches)

        outcomes = await asyncio.gather(
            *(self._run_unet(batch) for batch in unet_batches),
            *(self._run_vae(batch) for batch in vae_batches),
            return_exceptions=True)

        events: list[Event] = []
        for batch, outcome in zip(unet_batches, outcomes[:len(unet_batches)]):
            events += self._apply_unet(batch, outcome)
        for batch, outcome in zip(vae_batches, outcomes[len(unet_batches):]):
            events += self._apply_vae(batch, outcome)
        return StepReport(
            events=tuple(events),
            unet_rows=sum(g.unet_rows for batch in unet_batches for g in batch),
            unet_calls=len(unet_batches),
            mixed_timestep_calls=mixed_timestep_calls,
            vae_images=sum(len(batch) for batch in vae_batches),
            latency_s=self._clock() - started_s)

    def _view(self) -> SchedulerView:
        queues = self._queues
        return SchedulerView(waiting=[g.view() for g in queues.waiting],
                             denoising=[g.view() for g in queues.denoising],
                             decode_ready=[g.view() for g in queues.decode_ready])

    def _admit(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            generation = self._queues.waiting.popleft()
            assert generation.request_id == request_id, "planners admit a prefix of the waiting queue"
            self._queues.denoising.append(generation)

    def _resolve(self, request_ids: Sequence[str]) -> list[_Generation]:
        return [self._live[request_id] for request_id in request_ids]

    async def _run_unet(self, batch: list[_Generation]) -> np.ndarray:
        samples, timesteps, embeddings = [], [], []
        for generation in batch:
            plan, k = generation.sampler_plan, generation.steps_done
            model_input = generation.latent * plan.input_scales[k]
            for _ in range(generation.unet_rows):
                samples.append(model_input)
                timesteps.append(plan.model_timesteps[k])
            embeddings.append(generation.text_embeddings)
        return await self._executor.run_unet(np.stack(samples), np.asarray(timesteps, dtype=np.float32),
                                             np.concatenate(embeddings))

    async def _run_vae(self, batch: list[_Generation]) -> np.ndarray:
        return await self._executor.run_vae(np.stack([generation.latent for generation in batch]))

    def _is_live(self, generation: _Generation) -> bool:
        """Still the same live request (not aborted, and its id not reused, while a call ran)."""
        return self._live.get(generation.request_id) is generation

    def _apply_unet(self, batch: list[_Generation], outcome: np.ndarray | BaseException) -> list[Event]:
        rows = sum(generation.unet_rows for generation in batch)
        expected = (rows, *batch[0].latent.shape)
        if not isinstance(outcome, BaseException) and outcome.shape != expected:
            outcome = ExecutionFailed(f"UNet returned shape {list(outcome.shape)}, expected {list(expected)}")
        if isinstance(outcome, BaseException):
            return self._fail(batch, outcome, "UNet")
        events: list[Event] = []
        row = 0
        survivors, latents, noises, sample_coefs, noise_coefs = [], [], [], [], []
        for generation in batch:
            rows = outcome[row:row + generation.unet_rows]
            row += generation.unet_rows
            if not self._is_live(generation):
                continue  # aborted while the call ran
            params, plan, k = generation.params, generation.sampler_plan, generation.steps_done
            noise = (guided_noise(rows[0:1], rows[1:2], np.float32([params.guidance_scale]))[0]
                     if generation.unet_rows == 2 else rows[0])
            survivors.append(generation)
            latents.append(generation.latent)
            noises.append(noise)
            sample_coefs.append(plan.sample_coefs[k])
            noise_coefs.append(plan.noise_coefs[k])
        if not survivors:
            return events
        stepped = batched_step(np.stack(latents), np.stack(noises), np.asarray(sample_coefs, np.float32),
                               np.asarray(noise_coefs, np.float32))
        for generation, latent in zip(survivors, stepped):
            generation.latent = latent
            generation.steps_done += 1
            if generation.params.progress:
                events.append(StepProgress(generation.request_id, generation.steps_done,
                                           generation.params.num_steps))
            if generation.steps_done == generation.params.num_steps:
                self._queues.denoising.remove(generation)
                self._queues.decode_ready.append(generation)
        return events

    def _apply_vae(self, batch: list[_Generation], outcome: np.ndarray | BaseException) -> list[Event]:
        if not isinstance(outcome, BaseException) and (outcome.ndim != 4 or outcome.shape[:2] != (len(batch), 3)):
            outcome = ExecutionFailed(f"VAE decoder returned shape {list(outcome.shape)}, expected [{len(batch)}, 3, H, W]")
        if isinstance(outcome, BaseException):
            return self._fail(batch, outcome, "VAE decoder")
        images = to_uint8_images(outcome)
        events: list[Event] = []
        for generation, image in zip(batch, images):
            if self._is_live(generation):
                del self._live[generation.request_id]
                events.append(RequestFinished(generation.request_id, image=image))
        return events

    def _fail(self, batch: list[_Generation], cause: BaseException, model: str) -> list[Event]:
        error = cause if isinstance(cause, SynerDiffError) else ExecutionFailed(f"{model} call failed")
        return [event for generation in batch
                if self._is_live(generation) and (event := self.abort(generation.request_id, error))]


def _mixed_timesteps(batch: Sequence[_Generation]) -> bool:
    timesteps = {float(g.sampler_plan.model_timesteps[g.steps_done]) for g in batch}
    return len(timesteps) > 1


def to_uint8_images(decoded: np.ndarray) -> np.ndarray:
    """VAE output [B, 3, H, W] in about [-1, 1] -> [B, H, W, 3] uint8, as diffusers post-processes."""
    unit = np.clip(decoded / 2 + 0.5, 0.0, 1.0)
    return np.ascontiguousarray((unit * 255).round().astype(np.uint8).transpose(0, 2, 3, 1))
