"""Prometheus metrics of the `diffusion` loop, published on Triton's /metrics (port 8002).

Triton's own statistics cover only `execute()` of a decoupled model (the enqueue), not the generation,
so these are the numbers to watch: queue and batch sizes per step, step and end-to-end latency, outcomes.
"""

from __future__ import annotations

from model_repository.triton_edge import MetricFactory
from scheduler_backend.engine import Engine, RequestFinished, StepReport
from scheduler_backend.errors import Cancelled, InvalidArgument, Overloaded, SynerDiffError

_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_OUTCOMES = ("success", "invalid_argument", "rejected_overload", "cancelled", "failed")


def outcome_label(error: SynerDiffError | None) -> str:
    if error is None:
        return "success"
    if isinstance(error, InvalidArgument):
        return "invalid_argument"
    if isinstance(error, Overloaded):
        return "rejected_overload"
    if isinstance(error, Cancelled):
        return "cancelled"
    return "failed"


class DiffusionMetrics:
    def __init__(self, factory: MetricFactory) -> None:
        self._factory = factory  # owns the metric families, which must outlive their metrics
        self._queue = factory.gauge("synerdiff_waiting_requests", "Requests waiting to join the batch")
        self._running = factory.gauge("synerdiff_running_requests", "Requests denoising")
        self._vae_backlog = factory.gauge("synerdiff_vae_backlog_images", "Denoised images waiting for VAE decode")
        self._unet_rows = factory.histogram("synerdiff_unet_rows_per_step", "UNet rows per step", _ROW_BUCKETS)
        self._mixed = factory.counter("synerdiff_mixed_timestep_unet_calls_total",
                                      "UNet calls whose rows were at different timesteps")
        self._step_latency = factory.histogram("synerdiff_step_latency_seconds", "Loop iteration latency",
                                               _LATENCY_BUCKETS_S)
        self._e2e_latency = factory.histogram("synerdiff_request_latency_seconds",
                                              "Arrival to final response, successful requests", _LATENCY_BUCKETS_S)
        self._outcomes = factory.counters("synerdiff_requests_total", "Requests by final outcome", "outcome",
                                          _OUTCOMES)

    def step(self, report: StepReport, engine: Engine) -> None:
        self._queue.set(engine.num_waiting)
        self._running.set(engine.num_denoising)
        self._vae_backlog.set(engine.num_decode_ready)
        if report.unet_rows:
            self._unet_rows.observe(report.unet_rows)
        if report.mixed_timestep_calls:
            self._mixed.increment(report.mixed_timestep_calls)
        if report.events or report.unet_calls or report.vae_images:
            self._step_latency.observe(report.latency_s)

    def finished(self, event: RequestFinished, latency_s: float) -> None:
        self._outcomes[outcome_label(event.error)].increment(1)
        if event.error is None:
            self._e2e_latency.observe(latency_s)

    def rejected(self, error: SynerDiffError) -> None:
        self._outcomes[outcome_label(error)].increment(1)
