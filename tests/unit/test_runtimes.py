"""The runtimes the profiler and the overhead probe run models under (perf/runtimes.py): each binds a graph's inputs
in the graph's order, so ONNX Runtime and the torch modules give the same outputs for the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.exporter import export_models
from perf.profile import unet_inputs
from perf.runtimes import parse_runtime, runner, runners, torch_device
from perf.served_targets import MEASURED_TARGETS, runtime_of

BUILD = Path(__file__).resolve().parents[2] / "build"


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return export_models("tiny", BUILD / "models" / "tiny", seed=0, show_progress=False, log=lambda _: None)


@pytest.mark.parametrize("text", ["onnx", "torch:cpu", "torch:cuda", "torch:cuda:1"])
def test_runtime_names_are_parsed(text: str) -> None:
    assert parse_runtime(text) == text


@pytest.mark.parametrize("text", ["", "torch", "torch:", "torch:cuda:x", "tensorrt", "numpy"])
def test_a_bad_runtime_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="runtime must be"):
        parse_runtime(text)


def test_torch_device_of_a_runtime() -> None:
    assert torch_device("onnx") is None
    assert torch_device("torch:cpu") == "cpu" and torch_device("torch:cuda:1") == "cuda:1"


@pytest.mark.parametrize("graph", ["unet", "vae_decoder", "vae_stages"])
def test_onnx_and_torch_runners_agree(tiny_dir: Path, graph: str) -> None:
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    side = manifest["default_size"] // manifest["vae_scale_factor"]
    rng = np.random.default_rng(0)
    if graph == "unet":
        inputs = [unet_inputs(manifest, 2, (side, side), rng)]
    else:
        inputs = [[rng.standard_normal((1, manifest["latent_channels"], side, side), dtype=np.float32)]]
    onnx_runners = runners("onnx", tiny_dir, manifest, graph, 1)
    torch_runners = runners("torch:cpu", tiny_dir, manifest, graph, 1)
    assert len(onnx_runners) == len(torch_runners) >= 1
    for onnx_runner, torch_runner in zip(onnx_runners, torch_runners):  # stages chained on ONNX's outputs
        expected = onnx_runner(inputs[-1])
        np.testing.assert_allclose(torch_runner(inputs[-1]), expected, rtol=1e-3, atol=1e-4)
        inputs.append([expected])


def test_a_graph_with_several_modules_is_not_one_runner(tiny_dir: Path) -> None:
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    with pytest.raises(ValueError):
        runner("onnx", tiny_dir, manifest, "vae_stages", 1)


def test_each_measured_target_is_profiled_under_the_runtime_its_models_run() -> None:
    assert {target: runtime_of(target) for target in MEASURED_TARGETS} == {
        "cpu": "onnx", "cpu-torch": "torch:cpu", "gpu-torch": "torch:cuda"}
    with pytest.raises(ValueError, match="TensorRT"):
        runtime_of("gpu")
