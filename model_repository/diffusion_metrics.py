"""Prometheus metrics of the `diffusion` loop, published on Triton's /metrics (port 8002).

Triton's own statistics cover only `execute()` of a decoupled model (the enqueue), not the generation,
so these are the numbers to watch: queue and batch sizes per step, Skip-CFG rows, VAE chunk backlog, the
controller's threshold, planner decision time, step latency and the loop's own share of it, end-to-end latency,
outcomes.
"""

from __future__ import annotations

from model_repository.triton_edge import MetricFactory
from scheduler_backend.engine import Engine, RequestFinished, StepReport
from scheduler_backend.errors import Cancelled, InvalidArgument, Overloaded, SynerDiffError

_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_PLANNING_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
_LOOP_OWN_BUCKETS_S = (*_PLANNING_BUCKETS_S, 0.05, 0.1)
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
        self._closed = False
        self._queue = factory.gauge("synerdiff_waiting_requests", "Requests waiting to join the batch")
        self._running = factory.gauge("synerdiff_running_requests", "Requests admitted and not finished")
        self._vae_backlog = factory.gauge("synerdiff_vae_backlog_images", "Denoised images waiting for VAE decode")
        self._chunk_backlog = factory.gauge("synerdiff_vae_chunk_backlog", "VAE chunks not run yet")
        self._threshold = factory.gauge("synerdiff_unet_threshold",
                                        "UNet throughput threshold (fraction of peak) the planner keeps")
        self._skipped = factory.counter("synerdiff_skip_cfg_rows_total", "Unconditional UNet rows skipped")
        self._chunks = factory.counter("synerdiff_vae_chunks_total", "VAE chunks run (one per image)")
        self._planning = factory.histogram("synerdiff_planning_seconds", "Planner decision time",
                                           _PLANNING_BUCKETS_S)
        self._unet_rows = factory.histogram("synerdiff_unet_rows_per_step", "UNet rows per step", _ROW_BUCKETS)
        self._mixed = factory.counter("synerdiff_mixed_timestep_unet_calls_total",
                                      "UNet calls whose rows were at different timesteps")
        self._step_latency = factory.histogram("synerdiff_step_latency_seconds", "Loop iteration latency",
                                               _LATENCY_BUCKETS_S)
        self._loop_own = factory.histogram("synerdiff_loop_own_seconds",
                                           "Loop iteration time outside model calls (planning, inputs, guidance, "
                                           "sampler step)", _LOOP_OWN_BUCKETS_S)
        self._e2e_latency = factory.histogram("synerdiff_request_latency_seconds",
                                              "Arrival to final response, successful requests", _LATENCY_BUCKETS_S)
        self._outcomes = factory.counters("synerdiff_requests_total", "Requests by final outcome", "outcome",
                                          _OUTCOMES)

    def close(self) -> None:
        """Release the Triton metric objects while the stub still runs, each metric before its family
        (python_backend#254). Left to the stub's exit they crash it with SIGSEGV (server#8662, seen on 2.51 at
        every shutdown). Every later call is a no-op."""
        self._closed = True
        for name in [name for name in vars(self) if name not in ("_factory", "_closed")]:
            setattr(self, name, None)
        self._factory.close()

    def step(self, report: StepReport, engine: Engine) -> None:
        if self._closed:
            return
        self._queue.set(engine.num_waiting)
        self._running.set(engine.num_denoising + engine.num_decoding)
        self._vae_backlog.set(engine.num_decoding)
        self._chunk_backlog.set(engine.vae_chunk_backlog)
        if report.threshold is not None:
            self._threshold.set(report.threshold)
        if report.is_idle:
            return
        self._planning.observe(report.planning_s)
        self._step_latency.observe(report.latency_s)
        self._loop_own.observe(report.loop_own_s)
        if report.unet_rows:
            self._unet_rows.observe(report.unet_rows)
        for counter, amount in ((self._mixed, report.mixed_timestep_calls), (self._skipped, report.skipped_cfg_rows),
                                (self._chunks, report.vae_chunks)):
            if amount:
                counter.increment(amount)

    def finished(self, event: RequestFinished, latency_s: float) -> None:
        if self._closed:
            return
        self._outcomes[outcome_label(event.error)].increment(1)
        if event.error is None:
            self._e2e_latency.observe(latency_s)

    def rejected(self, error: SynerDiffError) -> None:
        if self._closed:
            return
        self._outcomes[outcome_label(error)].increment(1)
