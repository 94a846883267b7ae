"""The measuring commands on a GPU (run on a GPU host: `python -m pytest -q tests/gpu`): the profiler under
`torch:cuda` and the serving-overhead probe on `gpu-torch`, at `tiny` scale. Their CPU twins run in CI on
`torch:cpu` / `cpu-torch` (tests/unit/test_profiler.py, tests/integration/test_overhead_probe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perf.overhead import Probe, measure
from perf.profile import measure_profile


def test_the_profiler_measures_the_torch_models_on_the_gpu(tiny_dir: Path) -> None:
    profile = measure_profile(tiny_dir, rows=(1, 2, 4), repeats=3, runtime="torch:cuda", log=lambda _: None)
    machine = profile.metadata["machine"]
    assert machine["runtime"] == "torch:cuda" and machine["device"] == torch.cuda.get_device_name(0)
    assert all(seconds > 0 for seconds in (*profile.unet_seconds, *profile.vae_chunk_seconds.values()))
    assert all(c.unet_slowdown >= 1.0 and c.vae_slowdown >= 1.0 for c in profile.contention.values())


@pytest.mark.integration
def test_the_overhead_probe_serves_gpu_torch(tiny_dir: Path, tmp_path: Path) -> None:
    probe = Probe("gpu-torch", (1, 4), low_steps=2, high_steps=10, guidance_scale=7.5, repeats=2)
    results = measure(tiny_dir, probe, tmp_path, tmp_path / "server.log")
    assert [(r.concurrency, r.rows) for r in results] == [(1, 2), (4, 8)]
    assert all(r.bare_step_s > 0 for r in results)
    assert "tensors torch:cuda" in (tmp_path / "server.log").read_text()
