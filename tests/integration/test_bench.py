"""The benchmark on the real tritonserver: replay's accounting (one record per arrival, whatever happens to the
request) and `synerdiff bench compare` end to end at tiny scale. Behaviour checks only, never speed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from PIL import Image

from client.cli import main as synerdiff
from export.render import ServingSettings
from perf.loadgen import replay
from perf.report import OUTCOMES
from perf.server import TritonServer
from perf.workload import ARRIVALS, Arrival, RequestMix
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration


def test_replay_gives_every_arrival_one_record_in_order_even_when_requests_fail(server: TritonServer) -> None:
    arrivals = [Arrival(0.0, 4, 7.5, seed=1), Arrival(0.0, 0, 7.5, seed=2),  # STEPS 0: INVALID_ARG
                Arrival(0.05, 3, 1.0, seed=3), Arrival(0.1, 5, 100.0, seed=4),  # GUIDANCE_SCALE 100: INVALID_ARG
                Arrival(0.1, 151, 7.5, seed=5), Arrival(0.2, 2, 7.5, "a lighthouse at dusk", seed=6)]
    records = asyncio.run(replay(server.ports.grpc_url, arrivals, timeout_s=60))
    assert [r.outcome for r in records] == ["image", "error", "image", "error", "error", "image"]
    assert [(r.arrival_s, r.num_steps, r.guided) for r in records] == [
        (a.time_s, a.num_steps, a.guidance_scale > 1.0) for a in arrivals]
    for record in records:
        assert record.finished_s is not None and record.finished_s >= record.arrival_s
        if record.outcome == "image":
            assert record.first_progress_s is not None
            assert record.arrival_s <= record.first_progress_s <= record.finished_s
        else:
            assert record.first_progress_s is None and record.latency_s is None


def test_replay_records_a_client_side_timeout_as_an_error(server: TritonServer) -> None:
    records = asyncio.run(replay(server.ports.grpc_url, [Arrival(0.0, 150, 7.5), Arrival(0.0, 150, 7.5)],
                                 timeout_s=0.3))
    assert [r.outcome for r in records] == ["error", "error"]


def test_replay_records_requests_refused_by_a_full_queue_as_rejected(tiny_models: Path) -> None:
    server = start_server(tiny_models, "bench-full-queue",
                          ServingSettings(policy="sequential", max_waiting_requests=1, max_running_requests=1))
    try:
        arrivals = [Arrival(0.0, 8, 7.5, seed=i) for i in range(6)]
        records = asyncio.run(replay(server.ports.grpc_url, arrivals, timeout_s=60))
    finally:
        server.stop()
    outcomes = [r.outcome for r in records]
    assert len(records) == len(arrivals)
    assert "image" in outcomes and "rejected" in outcomes and set(outcomes) <= {"image", "rejected"}


def test_bench_compare_writes_results_table_and_plots(tmp_path: Path) -> None:
    policies, loads, requests, seed, steps = ["continuous", "synerdiff"], [2.0], 6, 3, (4, 6)
    code = synerdiff(["bench", "compare", "--preset", "tiny", "--policies", ",".join(policies),
                      "--loads", ",".join(map(str, loads)), "--requests", str(requests), "--repeats", "1",
                      "--seed", str(seed), "--steps", ",".join(map(str, steps)), "--out", str(tmp_path)])
    assert code == 0

    results = json.loads((tmp_path / "results.json").read_text())
    rate = loads[0] * results["plan"]["bounds"]["throughput_per_s"]
    runs = results["runs"]
    assert sorted((run["policy"], run["arrivals"]) for run in runs) == sorted(
        (policy, kind) for policy in policies for kind in ARRIVALS)
    for run in runs:
        expected = ARRIVALS[run["arrivals"]](rate, requests, seed, RequestMix(steps=steps))
        assert [(r["arrival_s"], r["num_steps"]) for r in run["records"]] == [
            (a.time_s, a.num_steps) for a in expected]  # every arrival, once, in order
        assert all(r["outcome"] in OUTCOMES for r in run["records"])
        assert run["summary"]["requests"] == requests
    assert set(results["summaries"]) == {f"{p}|{k}|2" for p in policies for k in ARRIVALS}
    assert set(results["capacity"]) == set(policies)

    table = (tmp_path / "results.md").read_text()
    assert "| policy | max sustainable img/s |" in table
    for policy in policies:
        assert sum(line.startswith(f"| {policy} |") for line in table.splitlines()) == 1

    plots = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in plots] == ["latency-cdf-bursty.png", "latency-cdf-poisson.png", "p99-vs-load.png",
                                       "throughput-vs-load.png"]
    for plot in plots:
        with Image.open(plot) as image:
            image.verify()
        with Image.open(plot) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_bench_compare_serves_the_torch_target_with_a_profile_of_its_runtime(tmp_path: Path) -> None:
    """The route a GPU session takes (`--target gpu-torch`), on the CPU: the torch models, the loop's tensors in
    torch, the planner on a profile measured under torch."""
    code = synerdiff(["bench", "compare", "--preset", "tiny", "--target", "cpu-torch", "--policies", "synerdiff",
                      "--loads", "1.0", "--requests", "4", "--arrivals", "poisson", "--steps", "4",
                      "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["plan"]["target"] == "cpu-torch" and results["machine"]["runtime"] == "torch:cpu"
    assert [r["outcome"] for r in results["runs"][0]["records"]] == ["image"] * 4
    assert "target `cpu-torch`" in (tmp_path / "results.md").read_text()
    log = (tmp_path / "logs" / "r0-load1-synerdiff.log").read_text()
    assert "tensors torch:cpu" in log and "policy synerdiff" in log
