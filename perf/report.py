"""What a run of a workload produced, per request and in summary; the bounds the hardware allows.

Shared by the simulator (`perf/simulate_cli.py`) and the real-server benchmark (`perf/bench_cli.py`), so
both report the same quantities the same way.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from perf.workload import RequestMix
from scheduler_backend.profile import LatencyProfile

OUTCOMES = ("image", "rejected", "error", "cancelled")


@dataclass(frozen=True)
class RequestRecord:
    """One request of a run. Times are seconds from the start of the run; None when it never happened."""

    arrival_s: float
    num_steps: int
    guided: bool
    first_progress_s: float | None
    finished_s: float | None
    outcome: str  # one of OUTCOMES

    @property
    def latency_s(self) -> float | None:
        return None if self.outcome != "image" or self.finished_s is None else self.finished_s - self.arrival_s


@dataclass(frozen=True)
class LatencySummary:
    requests: int
    images: int
    rejected: int
    errors: int
    mean_s: float
    p50_s: float
    p99_s: float
    throughput_per_s: float  # images per second from the first arrival to the last completion

    @property
    def all_served(self) -> bool:
        return self.images == self.requests


def summarize_records(records: Sequence[RequestRecord]) -> LatencySummary:
    latencies = np.array([r.latency_s for r in records if r.latency_s is not None])
    finished = [r.finished_s for r in records if r.finished_s is not None]
    span_s = (max(finished) - min(r.arrival_s for r in records)) if finished else float("nan")
    count = len(latencies)
    stat = (lambda f: float(f(latencies))) if count else (lambda f: float("nan"))
    return LatencySummary(
        requests=len(records), images=count,
        rejected=sum(r.outcome == "rejected" for r in records),
        errors=sum(r.outcome in ("error", "cancelled") for r in records),
        mean_s=stat(np.mean), p50_s=stat(lambda a: np.percentile(a, 50)), p99_s=stat(lambda a: np.percentile(a, 99)),
        throughput_per_s=count / span_s if count and span_s > 0 else 0.0)


@dataclass(frozen=True)
class Bounds:
    """What the hardware allows for a request mix, from the latency profile alone."""

    throughput_per_s: float  # 1 / (mean steps x mean rows / peak rows/s + whole decode)
    single_latency_s: float  # the slowest request of the mix, alone, with its batch of one request
    slo_s: float  # the P99 bound that defines "sustainable"


def hardware_bounds(profile: LatencyProfile, mix: RequestMix, slo_factor: float) -> Bounds:
    rows = 1 + mix.guided_fraction
    work_s = statistics.mean(mix.steps) * rows / profile.peak_rows_per_second + profile.decode_seconds()
    single_rows = 2 if mix.guided_fraction > 0 else 1
    single_s = max(mix.steps) * profile.unet_call_seconds(single_rows) + profile.decode_seconds()
    return Bounds(1.0 / work_s, single_s, slo_factor * single_s)


def pooled_summary(runs: Sequence[Sequence[RequestRecord]]) -> LatencySummary:
    """Several runs of one workload as one summary: counts and latency statistics over all their records, and
    throughput as the mean of each run's own (each run's times start at 0, so a pooled span means nothing)."""
    pooled = summarize_records([record for run in runs for record in run])
    throughput = statistics.fmean(summarize_records(run).throughput_per_s for run in runs)
    return replace(pooled, throughput_per_s=throughput)


def bounds_line(bounds: Bounds) -> str:
    return (f"Hardware bound {bounds.throughput_per_s:.3f} img/s; single request {bounds.single_latency_s:.3f} s; "
            f"SLO for 'sustainable': P99 <= {bounds.slo_s:.2f} s.")


def policy_table(bounds: Bounds, capacity: Mapping[str, float], columns: Sequence[str],
                 cells: Mapping[str, Sequence[str]], reference: str = "synerdiff") -> list[str]:
    """Markdown lines of the side-by-side table: one row per policy of `cells` (in its order) with its maximum
    sustainable img/s (`capacity`), its ratio to `reference`'s ("-" when that is absent or 0) and its share of
    the hardware bound, then its `cells` under `columns` (one cell per column)."""
    base = capacity.get(reference) or 0.0
    lines = ["| policy | max sustainable img/s | vs " + reference + " | of bound | " + " | ".join(columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for policy, row in cells.items():
        assert len(row) == len(columns), f"{policy}: {len(row)} cells for {len(columns)} columns"
        rate = capacity[policy]
        lines.append(f"| {policy} | {rate:.3f} | " + (f"{rate / base:.2f}x" if base else "-")
                     + f" | {rate / bounds.throughput_per_s:.0%} | " + " | ".join(row) + " |")
    return lines


def summary_line(summary: LatencySummary) -> str:
    return (f"{summary.images}/{summary.requests} images ({summary.rejected} rejected, {summary.errors} failed); "
            f"latency mean {summary.mean_s:.2f} s, P50 {summary.p50_s:.2f} s, P99 {summary.p99_s:.2f} s; "
            f"{summary.throughput_per_s:.3f} img/s")
