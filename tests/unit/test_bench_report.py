"""The benchmark's accounting and report without a server: pooled summaries, "max sustainable" on the load grid,
the Markdown table, and replay's one-record-per-arrival against a port where nothing listens."""

from __future__ import annotations

import asyncio

import pytest

from perf.bench_cli import Comparison, Plan, Run, markdown
from perf.loadgen import replay
from perf.report import Bounds, RequestRecord, pooled_summary
from perf.server import free_ports
from perf.workload import Arrival, RequestMix

BOUNDS = Bounds(throughput_per_s=1.0, single_latency_s=2.0, slo_s=10.0)


def served(latencies: list[float], spacing_s: float = 1.0) -> tuple[RequestRecord, ...]:
    """Requests arriving every `spacing_s`, each served with the given latency."""
    return tuple(RequestRecord(i * spacing_s, 10, True, i * spacing_s + 0.1, i * spacing_s + latency, "image")
                 for i, latency in enumerate(latencies))


def plan(policies: tuple[str, ...], loads: tuple[float, ...]) -> Plan:
    return Plan("tiny", "cpu", policies, loads, ("poisson",), 4, 1, 1, RequestMix(steps=(10,)), 5.0, BOUNDS)


def test_pooled_summary_pools_latencies_and_averages_each_runs_throughput() -> None:
    first, second = served([1.0, 1.0]), served([3.0, 3.0], spacing_s=3.0)  # spans 2 s and 6 s
    summary = pooled_summary([first, second])
    assert (summary.requests, summary.images, summary.p50_s) == (4, 4, 2.0)
    assert summary.throughput_per_s == pytest.approx((2 / 2.0 + 2 / 6.0) / 2)


def test_max_sustainable_is_the_highest_grid_load_within_the_slo_with_every_request_served() -> None:
    loads = (0.3, 0.6, 0.9)
    failed = RequestRecord(3.0, 10, True, None, 3.0, "rejected")
    runs = [Run(0, 0.3, "a", "poisson", served([1.0] * 4), 0.0),
            Run(0, 0.6, "a", "poisson", served([2.0] * 4), 0.0),
            Run(0, 0.9, "a", "poisson", served([20.0] * 4), 0.0),  # P99 over the SLO
            Run(0, 0.3, "b", "poisson", served([1.0] * 3) + (failed,), 0.0),  # not every request served
            Run(0, 0.6, "b", "poisson", served([1.0] * 4), 0.0),
            Run(0, 0.9, "b", "poisson", served([1.0] * 3) + (failed,), 0.0),
            *[Run(0, load, "c", "poisson", served([11.0] * 4), 0.0) for load in loads]]
    comparison = Comparison(plan(("a", "b", "c"), loads), tuple(runs), "2.51.0", 1.0)
    capacity = comparison.capacity(comparison.summaries())
    assert (capacity["a"].load, capacity["b"].load, capacity["c"].load) == (0.6, 0.6, None)
    assert capacity["a"].images_per_s == pytest.approx(4 / 5.0) and capacity["c"].images_per_s == 0.0


def test_markdown_has_one_row_per_policy_with_its_ratio_to_synerdiff() -> None:
    runs = (Run(0, 0.5, "static", "poisson", served([1.0] * 4, spacing_s=2.0), 0.1),  # 4 images in 7 s
            Run(0, 0.5, "synerdiff", "poisson", served([1.0] * 4), 0.1))  # 4 images in 4 s
    text = markdown(Comparison(plan(("static", "synerdiff"), (0.5,)), runs, "2.51.0", 60.0))
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| policy")]
    assert [row.split(" | ")[0] for row in rows] == ["| static", "| synerdiff"]
    assert rows[0].split(" | ")[1:4] == ["0.571", "0.57x", "57%"]
    assert rows[1].split(" | ")[4] == "1.00 / 1.00 / 1.00 |"


def test_replay_accounts_for_every_arrival_when_no_server_answers() -> None:
    arrivals = [Arrival(0.0, 4, 7.5), Arrival(0.01, 4, 1.0), Arrival(0.02, 4, 7.5)]
    records = asyncio.run(replay(f"127.0.0.1:{free_ports(1)[0]}", arrivals, timeout_s=10))
    assert len(records) == len(arrivals)
    assert [r.outcome for r in records] == ["rejected"] * 3  # gRPC UNAVAILABLE: connection refused
    assert all(r.latency_s is None for r in records)
