"""`synerdiff overhead` end to end on the real server: it serves the target, measures both steps and reports them
(the numbers themselves are machine-dependent and not asserted; docs/perf.md records them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import main as cli_main
from perf.overhead import Probe, measure, served_run
from perf.server import TritonServer


@pytest.mark.parametrize("target", ["cpu", "cpu-torch"])
def test_the_probe_measures_a_bare_and_a_served_step_per_concurrency(tiny_models: Path, tmp_path: Path,
                                                                     target: str) -> None:
    probe = Probe(target, (1, 2), low_steps=2, high_steps=6, guidance_scale=7.5, repeats=1)
    results = measure(tiny_models, probe, tmp_path, tmp_path / "server.log")
    assert [(r.concurrency, r.rows) for r in results] == [(1, 2), (2, 4)]
    assert all(r.bare_step_s > 0 for r in results)
    log = (tmp_path / "server.log").read_text()
    assert "policy continuous" in log and ("tensors torch:cpu" in log) == (target == "cpu-torch")


def test_the_command_prints_the_table_and_writes_the_json(tiny_models: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_models)
    out = tmp_path / "overhead.json"
    assert cli_main(["overhead", "--preset", "tiny", "--concurrency", "1", "--steps", "2,6", "--repeats", "1",
                     "--build-dir", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| requests at once | UNet rows |" in printed and "\n| 1 | 2 |" in printed
    written = json.loads(out.read_text())
    assert written["probe"]["target"] == "cpu" and written["machine"]["onnxruntime"]
    (result,) = written["results"]
    assert result["rows"] == 2 and "loop_own_step_s" in result
    assert result["fraction"] == pytest.approx(result["overhead_s"] / result["bare_step_s"])


def test_a_served_run_reads_the_loops_own_time_from_the_servers_metrics(server: TritonServer) -> None:
    """synerdiff_loop_own_seconds grows by the run's iterations outside model calls: more than nothing, less than
    the run's wall."""
    run = served_run(server, concurrency=2, steps=3, guidance_scale=7.5)
    assert 0.0 < run.loop_own_s < run.wall_s
