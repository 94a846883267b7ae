"""Planners: given what is waiting, denoising and awaiting decode, decide one iteration's work.

A planner is pure: it reads a `SchedulerView` (plain data, a snapshot) and returns a `StepPlan` (plain
data). It never calls a model and never mutates the engine; the engine applies the plan. This keeps
every policy testable with hand-made views, and lets the simulator and the server share them.

Invariants of every plan:
- `admit` is a prefix of the waiting queue (FIFO: nobody is overtaken);
- each UNet call holds requests of one latent shape, each request in at most one call;
- a VAE call holds only requests whose denoising is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class RequestView:
    """What a planner may know of one request."""

    request_id: str
    latent_shape: tuple[int, ...]
    unet_rows: int  # rows this request adds to a UNet call at its next step (2 with CFG, else 1)
    steps_done: int
    num_steps: int


@dataclass(frozen=True)
class SchedulerView:
    waiting: Sequence[RequestView]
    denoising: Sequence[RequestView]
    decode_ready: Sequence[RequestView]


@dataclass(frozen=True)
class UnetCall:
    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class VaeCall:
    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class StepPlan:
    admit: tuple[str, ...] = ()
    unet_calls: tuple[UnetCall, ...] = ()
    vae_calls: tuple[VaeCall, ...] = ()

    @property
    def is_idle(self) -> bool:
        return not (self.admit or self.unet_calls or self.vae_calls)


class Planner(Protocol):
    def plan(self, view: SchedulerView) -> StepPlan: ...


def group_by_shape(requests: Sequence[RequestView]) -> tuple[tuple[str, ...], ...]:
    """Request ids grouped by latent shape, groups in order of first appearance (so FIFO is kept)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for request in requests:
        groups.setdefault(request.latent_shape, []).append(request.request_id)
    return tuple(tuple(ids) for ids in groups.values())


@dataclass(frozen=True)
class ContinuousPlanner:
    """Naive step-level continuous batching (InstGenIE-like).

    Every iteration: admit waiting requests up to `max_running_requests`, step every denoising request
    once (one UNet call per latent shape), and decode every finished image whole, beside the UNet.
    """

    max_running_requests: int

    def plan(self, view: SchedulerView) -> StepPlan:
        free_slots = max(0, self.max_running_requests - len(view.denoising))
        admitted = tuple(view.waiting[:free_slots])
        stepping = list(view.denoising) + list(admitted)
        return StepPlan(
            admit=tuple(r.request_id for r in admitted),
            unet_calls=tuple(UnetCall(ids) for ids in group_by_shape(stepping)),
            vae_calls=tuple(VaeCall(ids) for ids in group_by_shape(view.decode_ready)),
        )


@dataclass(frozen=True)
class SequentialPlanner:
    """One request at a time, start to finish, like a plain diffusers pipeline: the reference baseline."""

    def plan(self, view: SchedulerView) -> StepPlan:
        if view.decode_ready:
            return StepPlan(vae_calls=(VaeCall((view.decode_ready[0].request_id,)),))
        if view.denoising:
            return StepPlan(unet_calls=(UnetCall((view.denoising[0].request_id,)),))
        if view.waiting:
            first = view.waiting[0].request_id
            return StepPlan(admit=(first,), unet_calls=(UnetCall((first,)),))
        return StepPlan()
