"""perf_analyzer 2.51 (from the tritonclient wheel) drives the decoupled models with --streaming over gRPC
using the recipe's JSON prompts, and writes its CSV. A behaviour check, not a speed check."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from perf.server import TritonServer

pytestmark = pytest.mark.integration
RECIPE = Path(__file__).resolve().parents[2] / "perf" / "perf_analyzer" / "run.sh"


@pytest.mark.parametrize("model", ["diffusion", "txt2img"])
def test_perf_analyzer_streams_json_prompts_and_writes_csv(server: TritonServer, model: str, tmp_path: Path) -> None:
    env = {**os.environ, "MODEL": model, "GRPC_URL": server.ports.grpc_url, "OUT": str(tmp_path),
           "LOAD": "--concurrency-range 2 --measurement-mode count_windows --measurement-request-count 6",
           "STABILITY_PCT": "100", "MAX_TRIALS": "4"}
    completed = subprocess.run(["bash", str(RECIPE)], env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(tmp_path / f"{model}.csv") as table:
        rows = list(csv.DictReader(table))
    assert rows and float(rows[0]["Inferences/Second"]) > 0 and int(rows[0]["p99 latency"]) > 0


def test_perf_analyzer_bursts_recipe_replays_an_intervals_file(server: TritonServer, tmp_path: Path) -> None:
    """bursts.sh: on/off bursts (2 x 2 req/s for 1 s, 1 s off, twice: 8 requests per 4 s loop with seed 0)
    through --request-intervals; one measurement window per loop of the file."""
    env = {**os.environ, "MODEL": "diffusion", "GRPC_URL": server.ports.grpc_url, "OUT": str(tmp_path),
           "RATE": "2", "BURST": "2", "ON_S": "1", "CYCLES": "2", "SEED": "0",
           "STABILITY_PCT": "1000", "MAX_TRIALS": "4"}
    completed = subprocess.run(["bash", str(RECIPE.with_name("bursts.sh"))], env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    intervals = [int(line) for line in (tmp_path / "diffusion-bursts-intervals.txt").read_text().split()]
    assert len(intervals) == 8 and abs(sum(intervals) - 4_000_000) <= len(intervals)  # µs, looped by PA
    assert "Measurement window: 4000 msec" in completed.stdout
    with open(tmp_path / "diffusion-bursts.csv") as table:
        rows = list(csv.DictReader(table))
    assert rows and float(rows[0]["Inferences/Second"]) > 0 and int(rows[0]["p99 latency"]) > 0
