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
