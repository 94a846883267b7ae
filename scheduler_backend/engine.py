"""The generation engine: `add / abort / step()` around an `Executor`.

The engine owns every live request from admission to its final event. One `step()` is one iteration:
ask the planner for a `StepPlan`, run its UNet calls and its `vae_beside` chunks concurrently through
the executor, then its `vae_after` chunks, and apply the results (a sampler step per row, a request whose
denoising completed becomes a `VaeJob` of chunks, a completed decode is emitted as an image). The Triton model supplies a BLS executor; tests and the simulator supply local ones.

Invariants:
- every request that `add` accepted ends with exactly one `RequestFinished` event (from `step`,
  `abort` or `fail_all`), and after it the engine holds nothing of that request;
- a request still waiting when its queue deadline passes ends with `Overloaded` at the next step, before
  the planner runs (so it never joins the batch after its deadline);
- a failing model call fails only the requests it carried;
- Skip-CFG only ever applies to a guided request's step that its `SkipCfgPolicy` allows;
- a row's arithmetic never depends on the other rows of its batch, so the same request gives the same
  image alone or batched (the models are batch-invariant on ONNX Runtime CPU);
- the request's tensors (latent, text embeddings, VAE chunks) live where the engine's `Arrays` puts them (host
  numpy by default, a GPU's tensors for a GPU loop) from `add` to the finished image, which alone is brought to
  the host; the loop's arithmetic is the same on every `Arrays` (scheduler_backend/arrays.py);
- `add` and `abort` may be called while a `step` awaits its executor (same event loop): a request
  added then waits for the next step; one aborted then is dropped when the step's results arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence, TypeVar

import numpy as np

from scheduler_backend.arrays import NUMPY, Array, Arrays, per_row
from scheduler_backend.errors import Cancelled, ExecutionFailed, Overloaded, SynerDiffError
from scheduler_backend.limits import Limits
from scheduler_backend.planner import Planner, RequestView, SchedulerView, VaeCall, VaeJobView
from scheduler_backend.request import GenerationParams
from scheduler_backend.sampler import (NoiseSchedule, SamplerPlan, batched_step, guided_noise, initial_latent,
                                       make_sampler_plan)
from scheduler_backend.skip_cfg import SkipCfgPolicy
from scheduler_backend.vae_chunks import ChunkingSpec, VaeJob

T = TypeVar("T")


class Executor(Protocol):
    """Runs the models on arrays of the engine's `Arrays` and answers in them. Implementations raise
    `ExecutionFailed` (or anything) when a call fails."""

    async def run_unet(self, samples: Array, timesteps: Array, text_embeddings: Array) -> Array:
        """[R, C, h, w] f32, [R] f32, [R, L, D] f32 -> noise prediction [R, C, h, w] f32."""
        ...

    async def run_vae(self, latents: Array) -> Array:
        """[B, C, h, w] f32 raw latents (whole or tiles) -> images [B, 3, H, W] f32 in about [-1, 1]."""
        ...

    async def run_vae_stage(self, stage: int, hidden: Array) -> Array:
        """Decoder stage `stage` on a batch: [B, ...] f32 -> [B, ...] f32 (shapes: `StageShapes`)."""
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
class UnetWork:
    rows: int
    latent_shape: tuple[int, ...]


@dataclass(frozen=True)
class ChunkWork:
    kind: str
    latent_shape: tuple[int, ...]  # of the request being decoded


@dataclass(frozen=True)
class StepReport:
    """What one iteration did, for metrics, logs and the simulator."""

    events: tuple[Event, ...]
    unet_rows: int = 0
    unet_calls: int = 0
    mixed_timestep_calls: int = 0  # UNet calls whose rows were at different timesteps
    skipped_cfg_rows: int = 0  # unconditional rows left out by Skip-CFG
    unet_work: tuple[UnetWork, ...] = ()  # per UNet call
    chunks_beside: tuple[ChunkWork, ...] = ()  # chunk runs (one per request) beside the UNet, in order
    chunks_after: tuple[ChunkWork, ...] = ()
    vae_images: int = 0  # decodes completed
    threshold: float | None = None
    predicted_s: float | None = None  # the planner's estimate of this iteration
    planning_s: float = 0.0  # the planner's decision time (wall clock, with the view it reads)
    latency_s: float = 0.0
    loop_own_s: float = 0.0  # real time outside model calls: planning, inputs, guidance, sampler step, bookkeeping
    retry_after_s: float | None = None  # an idle planner's wish to be asked again after this long

    @property
    def vae_chunks(self) -> int:
        return len(self.chunks_beside) + len(self.chunks_after)

    @property
    def is_idle(self) -> bool:
        return not (self.events or self.unet_calls or self.vae_chunks)


@dataclass(eq=False)
class _Generation:
    request_id: str
    params: GenerationParams
    sampler_plan: SamplerPlan
    text_embeddings: Array  # [rows, L, D]: (unconditional, prompt) with CFG, else (prompt,)
    latent: Array
    arrived_s: float
    queue_deadline_s: float | None = None  # when it must have joined the batch, or it is refused
    steps_done: int = 0
    skipped_cfg: int = 0
    vae_job: VaeJob | None = None  # from the end of denoising

    @property
    def unet_rows(self) -> int:
        return self.text_embeddings.shape[0]


@dataclass
class _Queues:
    waiting: deque[_Generation] = field(default_factory=deque)
    denoising: list[_Generation] = field(default_factory=list)
    decoding: list[_Generation] = field(default_factory=list)  # in the order denoising completed


class Engine:
    def __init__(self, executor: Executor, planner: Planner, limits: Limits, schedule: NoiseSchedule,
                 clock: Callable[[], float] = time.monotonic, chunking: ChunkingSpec = ChunkingSpec(),
                 skip_cfg: SkipCfgPolicy | None = None, arrays: Arrays = NUMPY) -> None:
        if chunking.mode == "stages" and limits.model.vae_stages is None:
            raise ValueError("VAE chunking 'stages' needs an export with VAE stage graphs; re-export the model")
        self._executor = executor
        self._planner = planner
        self._limits = limits
        self._schedule = schedule
        self._clock = clock
        self._chunking = chunking
        self._skip_cfg = skip_cfg
        self._arrays = arrays
        self._queues = _Queues()
        self._live: dict[str, _Generation] = {}
        self._model_calls = _ModelCallTime()  # of the step under way

    # -- the request side ---------------------------------------------------------------------------

    def add(self, request_id: str, params: GenerationParams, text_embeddings: np.ndarray,
            queue_timeout_s: float | None = None) -> None:
        """Queue a validated request. `text_embeddings` is host [2, L, D]: (unconditional, prompt).

        Raises `Overloaded` when the waiting queue is full; the request is then not held. A request that
        is still waiting `queue_timeout_s` after this call ends with `Overloaded`.
        """
        if request_id in self._live:
            raise ValueError(f"request id {request_id!r} is already live")
        self.ensure_capacity()
        sampler_plan = make_sampler_plan(params.sampler, self._schedule, params.num_steps)
        shape = self._limits.model.latent_shape(params.height, params.width)
        rows = text_embeddings if params.uses_cfg else text_embeddings[1:]
        now_s = self._clock()
        generation = _Generation(
            request_id=request_id, params=params, sampler_plan=sampler_plan,
            text_embeddings=self._arrays.from_host(rows),
            latent=self._arrays.from_host(initial_latent(params.seed, shape, sampler_plan.init_noise_sigma)),
            arrived_s=now_s, queue_deadline_s=None if queue_timeout_s is None else now_s + queue_timeout_s)
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
        for queue in (queues.denoising, queues.decoding):
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
    def num_decoding(self) -> int:
        return len(self._queues.decoding)

    @property
    def vae_chunk_backlog(self) -> int:
        """VAE chunks not run yet, over every request whose denoising completed."""
        return sum(len(g.vae_job.pending) for g in self._queues.decoding if g.vae_job is not None)

    @property
    def has_work(self) -> bool:
        return bool(self._live)

    # -- one iteration ------------------------------------------------------------------------------

    async def step(self) -> StepReport:
        started_s = self._clock()
        expired = self._expire_waiting(started_s)
        planning_started = time.perf_counter()  # a real duration, whatever clock the engine runs on
        self._model_calls = _ModelCallTime()
        plan = self._planner.plan(self._view())
        planning_s = time.perf_counter() - planning_started
        if plan.is_idle:
            return StepReport(events=tuple(expired), threshold=plan.threshold, planning_s=planning_s,
                              retry_after_s=_earliest(plan.retry_after_s, self._next_queue_deadline(started_s)))
        self._admit(plan.admit)
        unet_batches = [(self._resolve(call.request_ids), self._skippable(call.skip_cfg))
                        for call in plan.unet_calls]
        mixed_timestep_calls = sum(_mixed_timesteps(batch) for batch, _ in unet_batches)
        skipped_rows = sum(len(skips) for _, skips in unet_batches)
        unet_rows = sum(g.unet_rows for batch, _ in unet_batches for g in batch) - skipped_rows

        unet_work = tuple(UnetWork(sum(len(_rows(g, skips)) for g in batch), tuple(batch[0].latent.shape))
                          for batch, skips in unet_batches)
        chunks_beside: list[ChunkWork] = []
        chunks_after: list[ChunkWork] = []
        *outcomes, beside_events = await asyncio.gather(
            *(self._run_unet(batch, skips) for batch, skips in unet_batches),
            self._run_vae_lane(plan.vae_beside, chunks_beside), return_exceptions=True)
        if isinstance(beside_events, BaseException):
            raise beside_events  # the lane handles model failures itself; this is a bug
        events: list[Event] = expired + list(beside_events)
        for (batch, skips), outcome in zip(unet_batches, outcomes):
            events += self._apply_unet(batch, skips, outcome)
        events += await self._run_vae_lane(plan.vae_after, chunks_after)
        return StepReport(
            events=tuple(events),
            unet_rows=unet_rows,
            unet_calls=len(unet_batches),
            mixed_timestep_calls=mixed_timestep_calls,
            skipped_cfg_rows=skipped_rows,
            unet_work=unet_work,
            chunks_beside=tuple(chunks_beside),
            chunks_after=tuple(chunks_after),
            vae_images=sum(isinstance(e, RequestFinished) and e.image is not None for e in events),
            threshold=plan.threshold,
            predicted_s=plan.predicted_s,
            planning_s=planning_s,
            latency_s=self._clock() - started_s,
            loop_own_s=time.perf_counter() - planning_started - self._model_calls.seconds)

    def _expire_waiting(self, now_s: float) -> list[Event]:
        """End the waiting requests whose queue deadline has passed."""
        expired = [g for g in self._queues.waiting if g.queue_deadline_s is not None and now_s >= g.queue_deadline_s]
        return [event for g in expired if (event := self.abort(
            g.request_id, Overloaded(f"waited {now_s - g.arrived_s:.1f} s, longer than its queue timeout")))]

    def _next_queue_deadline(self, now_s: float) -> float | None:
        """Seconds until the earliest queue deadline of a waiting request (None: none has one)."""
        deadlines = [g.queue_deadline_s for g in self._queues.waiting if g.queue_deadline_s is not None]
        return max(0.0, min(deadlines) - now_s) if deadlines else None

    def _view(self) -> SchedulerView:
        queues, now_s = self._queues, self._clock()
        return SchedulerView(waiting=[self._request_view(g, now_s) for g in queues.waiting],
                             denoising=[self._request_view(g, now_s) for g in queues.denoising],
                             vae_jobs=[_job_view(g) for g in queues.decoding])

    def _request_view(self, generation: _Generation, now_s: float) -> RequestView:
        return RequestView(generation.request_id, tuple(generation.latent.shape), generation.unet_rows,
                           generation.steps_done, generation.params.num_steps,
                           can_skip_cfg=self._may_skip_cfg(generation), waited_s=now_s - generation.arrived_s)

    def _may_skip_cfg(self, generation: _Generation) -> bool:
        return (self._skip_cfg is not None and generation.unet_rows == 2
                and self._skip_cfg.eligible(generation.steps_done, generation.params.num_steps,
                                            generation.skipped_cfg))

    def _skippable(self, request_ids: Sequence[str]) -> frozenset[str]:
        """The planner's Skip-CFG choice, kept only where the policy allows it."""
        return frozenset(i for i in request_ids if i in self._live and self._may_skip_cfg(self._live[i]))

    def _admit(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            generation = self._queues.waiting.popleft()
            assert generation.request_id == request_id, "planners admit a prefix of the waiting queue"
            self._queues.denoising.append(generation)

    def _resolve(self, request_ids: Sequence[str]) -> list[_Generation]:
        return [self._live[request_id] for request_id in request_ids]

    async def _run_unet(self, batch: list[_Generation], skips: frozenset[str]) -> Array:
        """One UNet call over `batch`: a request's latent goes in once per text row (twice with CFG), scaled by its
        sampler's input scale, at its own timestep."""
        request_of_row, timesteps, input_scales = [], [], []
        for index, generation in enumerate(batch):
            plan, k, count = generation.sampler_plan, generation.steps_done, len(_rows(generation, skips))
            request_of_row += [index] * count
            timesteps += [plan.model_timesteps[k]] * count
            input_scales += [plan.input_scales[k]] * count
        per_row_values = self._arrays.from_host(np.array([timesteps, input_scales], dtype=np.float32))
        latents = self._arrays.stack([generation.latent for generation in batch])[request_of_row]
        samples = latents * per_row(per_row_values[1], latents)
        embeddings = self._arrays.concat([_rows(generation, skips) for generation in batch])
        return await self._model_calls.timed(self._executor.run_unet(samples, per_row_values[0], embeddings))

    def _is_live(self, generation: _Generation) -> bool:
        """Still the same live request (not aborted, and its id not reused, while a call ran)."""
        return self._live.get(generation.request_id) is generation

    def _apply_unet(self, batch: list[_Generation], skips: frozenset[str],
                    outcome: Array | BaseException) -> list[Event]:
        row_counts = [len(_rows(generation, skips)) for generation in batch]
        expected = (sum(row_counts), *batch[0].latent.shape)
        if not isinstance(outcome, BaseException) and tuple(outcome.shape) != expected:
            outcome = ExecutionFailed(f"UNet returned shape {list(outcome.shape)}, expected {list(expected)}")
        if isinstance(outcome, BaseException):
            return self._fail(batch, outcome, "UNet")
        survivors: list[_Generation] = []
        uncond_rows, cond_rows, guidance, sample_coefs, noise_coefs = [], [], [], [], []
        first_rows = np.cumsum([0, *row_counts[:-1]]).tolist()
        for generation, count, row in zip(batch, row_counts, first_rows):
            if not self._is_live(generation):
                continue  # aborted while the call ran
            plan, k = generation.sampler_plan, generation.steps_done
            survivors.append(generation)
            # with CFG: rows (unconditional, prompt); without, or with Skip-CFG: the prompt's row alone, guided
            # with g = 1, which gives that row bit for bit (guided_noise)
            uncond_rows.append(row)
            cond_rows.append(row + count - 1)
            guidance.append(generation.params.guidance_scale if count == 2 else 1.0)
            sample_coefs.append(plan.sample_coefs[k])
            noise_coefs.append(plan.noise_coefs[k])
            generation.skipped_cfg += count < generation.unet_rows
        if not survivors:
            return []
        coefs = self._arrays.from_host(np.array([guidance, sample_coefs, noise_coefs], dtype=np.float32))
        noises = guided_noise(outcome[uncond_rows], outcome[cond_rows], coefs[0])
        stepped = batched_step(self._arrays.stack([g.latent for g in survivors]), noises, coefs[1], coefs[2])
        events: list[Event] = []
        for generation, latent in zip(survivors, stepped):
            generation.latent = latent
            generation.steps_done += 1
            if generation.params.progress:
                events.append(StepProgress(generation.request_id, generation.steps_done,
                                           generation.params.num_steps))
            if generation.steps_done == generation.params.num_steps:
                self._queues.denoising.remove(generation)
                generation.vae_job = VaeJob(latent, self._chunking, self._limits.model.vae_scale_factor,
                                            self._limits.model.vae_stages, self._arrays)
                self._queues.decoding.append(generation)
        return events

    async def _run_vae_lane(self, calls: Sequence[VaeCall], ran: list[ChunkWork]) -> list[Event]:
        """Run VAE calls one after another; each runs the next chunk of its requests' decodes, batched.
        Appends what it ran to `ran`."""
        events: list[Event] = []
        for call in calls:
            batch = [g for g in self._resolve_live(call.request_ids) if g.vae_job is not None]
            if not batch:
                continue
            jobs = [g.vae_job for g in batch]
            chunk = jobs[0].next_chunk  # type: ignore[union-attr]
            inputs = self._arrays.stack([job.chunk_input() for job in jobs])  # type: ignore[union-attr]
            ran += [ChunkWork(chunk.kind, tuple(job.latent.shape)) for job in jobs]  # type: ignore[union-attr]
            try:
                if chunk.kind.startswith("stage"):
                    outcome: Array | BaseException = await self._model_calls.timed(
                        self._executor.run_vae_stage(chunk.index, inputs))
                else:
                    outcome = await self._model_calls.timed(self._executor.run_vae(inputs))
            except Exception as error:
                outcome = error
            events += self._apply_vae(batch, outcome)
        return events

    def _resolve_live(self, request_ids: Sequence[str]) -> list[_Generation]:
        return [self._live[i] for i in request_ids if i in self._live]

    def _apply_vae(self, batch: list[_Generation], outcome: Array | BaseException) -> list[Event]:
        if not isinstance(outcome, BaseException) and (outcome.ndim < 1 or outcome.shape[0] != len(batch)):
            outcome = ExecutionFailed(f"VAE decoder returned shape {list(outcome.shape)} for {len(batch)} inputs")
        if isinstance(outcome, BaseException):
            return self._fail(batch, outcome, "VAE decoder")
        events: list[Event] = []
        for generation, output in zip(batch, outcome):
            job = generation.vae_job
            if not self._is_live(generation) or job is None:
                continue
            try:
                job.complete(output)
            except ValueError as error:
                events += self._fail([generation], ExecutionFailed(str(error)), "VAE decoder")
                continue
            if job.done:
                self._queues.decoding.remove(generation)
                del self._live[generation.request_id]
                image = self._arrays.to_host_images(job.image[None])[0]
                events.append(RequestFinished(generation.request_id, image=image))
        return events

    def _fail(self, batch: list[_Generation], cause: BaseException, model: str) -> list[Event]:
        error = cause if isinstance(cause, SynerDiffError) else ExecutionFailed(f"{model} call failed")
        return [event for generation in batch
                if self._is_live(generation) and (event := self.abort(generation.request_id, error))]


class _ModelCallTime:
    """Real seconds during which at least one model call of a step was in flight (the UNet calls and the VAE lane
    overlap, so their durations are not summed)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._in_flight = 0
        self._since = 0.0

    async def timed(self, call: Awaitable[T]) -> T:
        if self._in_flight == 0:
            self._since = time.perf_counter()
        self._in_flight += 1
        try:
            return await call
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.seconds += time.perf_counter() - self._since


def _earliest(*delays: float | None) -> float | None:
    known = [delay for delay in delays if delay is not None]
    return min(known) if known else None


def _rows(generation: _Generation, skips: frozenset[str]) -> Array:
    """The text-embedding rows of this step: the prompt's only, when Skip-CFG applies."""
    if generation.request_id in skips:
        return generation.text_embeddings[1:]
    return generation.text_embeddings


def _job_view(generation: _Generation) -> VaeJobView:
    job = generation.vae_job
    assert job is not None
    return VaeJobView(generation.request_id, tuple(job.latent.shape), tuple(c.kind for c in job.pending),
                      job.next_input_shape)


def _mixed_timesteps(batch: Sequence[_Generation]) -> bool:
    timesteps = {float(g.sampler_plan.model_timesteps[g.steps_done]) for g in batch}
    return len(timesteps) > 1


def to_uint8_images(decoded: np.ndarray) -> np.ndarray:
    """VAE output [B, 3, H, W] in about [-1, 1] -> [B, H, W, 3] uint8, as diffusers post-processes."""
    return NUMPY.to_host_images(decoded)
