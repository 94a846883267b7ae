"""Planners: given what is waiting, denoising and awaiting decode, decide one iteration's work.

A planner reads a `SchedulerView` (plain data, a snapshot) and returns a `StepPlan` (plain data). It
never calls a model and never mutates the engine; the engine applies the plan. This keeps every policy
testable with hand-made views, and lets the simulator and the server share them. (A planner may keep
its own state across iterations, e.g. the SynerDiff controller.)

One iteration runs the plan's UNet calls and its `vae_beside` lane at the same time, then its
`vae_after` lane. A lane runs its VAE calls one after another; a VAE call runs the next chunk of each of
its requests, batched.

Invariants of every plan:
- `admit` is a prefix of the waiting queue (FIFO: nobody is overtaken);
- each UNet call holds requests of one latent shape, each request in at most one call, and `skip_cfg`
  only names requests of that call that the view marks `can_skip_cfg`;
- a VAE call holds only requests with a VAE job, whose next chunks share kind and input shape, and a
  request's chunks are planned in order (never more than it has pending).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class RequestView:
    """What a planner may know of one request that is waiting or denoising."""

    request_id: str
    latent_shape: tuple[int, ...]
    unet_rows: int  # rows this request adds to a UNet call at its next step (2 with CFG, else 1)
    steps_done: int
    num_steps: int
    can_skip_cfg: bool = False  # its next step may run the conditional row only
    waited_s: float = 0.0  # since it arrived


@dataclass(frozen=True)
class VaeJobView:
    """A request whose denoising is complete: its decode's pending chunks, in order."""

    request_id: str
    latent_shape: tuple[int, ...]
    pending: tuple[str, ...]  # chunk kinds, as the latency profile names them
    next_input_shape: tuple[int, ...]  # two jobs' next chunks batch only if these agree


@dataclass(frozen=True)
class SchedulerView:
    waiting: Sequence[RequestView] = ()
    denoising: Sequence[RequestView] = ()
    vae_jobs: Sequence[VaeJobView] = ()  # in the order their denoising completed

    @property
    def running(self) -> int:
        """Requests admitted and not finished: each holds memory until its image is sent."""
        return len(self.denoising) + len(self.vae_jobs)


@dataclass(frozen=True)
class UnetCall:
    request_ids: tuple[str, ...]
    skip_cfg: tuple[str, ...] = ()


@dataclass(frozen=True)
class VaeCall:
    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class StepPlan:
    admit: tuple[str, ...] = ()
    unet_calls: tuple[UnetCall, ...] = ()
    vae_beside: tuple[VaeCall, ...] = ()  # run while the UNet calls run
    vae_after: tuple[VaeCall, ...] = ()  # run once the UNet calls are done
    threshold: float | None = None  # the UNet throughput threshold θ the plan was made with
    unet_pace: float | None = None  # the fraction of peak the UNet kept pace with: θ, or less so decodes keep up
    predicted_s: float | None = None  # the planner's estimate of the iteration's duration
    retry_after_s: float | None = None  # an idle plan that wants another look after this long

    @property
    def is_idle(self) -> bool:
        return not (self.admit or self.unet_calls or self.vae_beside or self.vae_after)

    @property
    def vae_calls(self) -> tuple[VaeCall, ...]:
        return self.vae_beside + self.vae_after


class Planner(Protocol):
    def plan(self, view: SchedulerView) -> StepPlan: ...


def group_by_shape(requests: Sequence[RequestView]) -> tuple[tuple[str, ...], ...]:
    """Request ids grouped by latent shape, groups in order of first appearance (so FIFO is kept)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for request in requests:
        groups.setdefault(request.latent_shape, []).append(request.request_id)
    return tuple(tuple(ids) for ids in groups.values())


def batch_next_chunks(jobs: Sequence[VaeJobView]) -> tuple[VaeCall, ...]:
    """One VAE call per (chunk kind, input shape) for the next chunk of each job, in order of appearance."""
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for job in jobs:
        groups.setdefault((job.pending[0], job.next_input_shape), []).append(job.request_id)
    return tuple(VaeCall(tuple(ids)) for ids in groups.values())


@dataclass(frozen=True)
class ContinuousPlanner:
    """Naive step-level continuous batching (InstGenIE-like).

    Every iteration: admit waiting requests up to `max_running_requests`, step every denoising request
    once (one UNet call per latent shape), and decode every finished image beside the UNet (its next
    chunk; with whole-image chunks, the whole decode). No Skip-CFG, no threshold.
    """

    max_running_requests: int

    def plan(self, view: SchedulerView) -> StepPlan:
        free_slots = max(0, self.max_running_requests - view.running)
        admitted = tuple(view.waiting[:free_slots])
        stepping = list(view.denoising) + list(admitted)
        return StepPlan(
            admit=tuple(r.request_id for r in admitted),
            unet_calls=tuple(UnetCall(ids) for ids in group_by_shape(stepping)),
            vae_beside=batch_next_chunks(view.vae_jobs),
        )


@dataclass(frozen=True)
class SequentialPlanner:
    """One request at a time, start to finish, like a plain diffusers pipeline: the reference baseline."""

    def plan(self, view: SchedulerView) -> StepPlan:
        if view.vae_jobs:
            return StepPlan(vae_after=(VaeCall((view.vae_jobs[0].request_id,)),))
        if view.denoising:
            return StepPlan(unet_calls=(UnetCall((view.denoising[0].request_id,)),))
        if view.waiting:
            first = view.waiting[0].request_id
            return StepPlan(admit=(first,), unet_calls=(UnetCall((first,)),))
        return StepPlan()


@dataclass(frozen=True)
class StaticPlanner:
    """Whole requests batched like Triton's dynamic batcher in front of a plain diffusers pipeline.

    When nothing runs, a batch of up to `max_batch_size` waiting requests of the head's shape starts once
    it is full or its oldest request has waited `max_queue_delay_s`. The batch steps in lockstep until
    its longest request is done (finished ones wait), then every image is decoded in one call, and only
    then does the next batch start. No Skip-CFG, no chunking.
    """

    max_batch_size: int
    max_queue_delay_s: float = 0.05

    def plan(self, view: SchedulerView) -> StepPlan:
        if view.denoising:
            return StepPlan(unet_calls=(UnetCall(tuple(r.request_id for r in view.denoising)),))
        if view.vae_jobs:
            return StepPlan(vae_after=batch_next_chunks(view.vae_jobs))
        if not view.waiting:
            return StepPlan()
        head = view.waiting[0]
        batch: list[RequestView] = []  # admission is FIFO: the leading run of the head's shape
        for request in view.waiting[:self.max_batch_size]:
            if request.latent_shape != head.latent_shape:
                break
            batch.append(request)
        if len(batch) < self.max_batch_size and head.waited_s + 1e-9 < self.max_queue_delay_s:
            return StepPlan(retry_after_s=self.max_queue_delay_s - head.waited_s)
        ids = tuple(r.request_id for r in batch)
        return StepPlan(admit=ids, unet_calls=(UnetCall(ids),))
