"""The GPU launcher (perf/serve_gpu.py), without a GPU: its tritonserver command keeps the CPU launcher's security
flags and adds the memory pools, engines are reused only when built by this TensorRT, for this GPU and bound, and
without tensorrt the torch fallback is chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.gpu_memory import MemoryPools
from export.tensorrt_build import ENGINE_DIR, ENGINES_FILE, TensorRTUnavailable
from perf import serve_gpu
from perf.served_targets import served_target
from perf.server import Ports, server_command

POOLS = MemoryPools(cuda_pool_bytes=512 * 2**20, pinned_pool_bytes=1024 * 2**20)


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command[1:])


def test_gpu_command_keeps_the_cpu_launchers_flags_and_adds_the_pools(tmp_path: Path) -> None:
    server = serve_gpu.gpu_server(tmp_path, POOLS, "0.0.0.0", Ports(8000, 8001, 8002))
    assert server.log_path is None  # the container's log goes to stdout
    gpu = flags(server_command(tmp_path, server.ports, server.address, key="k", tritonserver=server.tritonserver,
                               gpu_metrics=server.gpu_metrics, extra_flags=server.extra_flags))
    cpu = flags(server_command(tmp_path, Ports(8000, 8001, 8002), "0.0.0.0", key="k"))
    assert server.tritonserver == "/opt/tritonserver/bin/tritonserver"
    differing = {name for name in cpu if gpu.get(name) != cpu[name]}
    assert differing == {"--backend-directory", "--allow-gpu-metrics"}  # the container's backends; GPU metrics on
    assert "--backend-directory" not in gpu and gpu["--allow-gpu-metrics"] == "true"
    assert gpu["--cuda-memory-pool-byte-size"] == f"0:{512 * 2**20}"
    assert gpu["--pinned-memory-pool-byte-size"] == str(1024 * 2**20)
    assert gpu["--model-control-mode"] == "none"


def write_engines(model_dir: Path, **info: object) -> None:
    (model_dir / ENGINE_DIR).mkdir(parents=True)
    (model_dir / ENGINE_DIR / ENGINES_FILE).write_text(json.dumps(info))


def test_engines_are_reused_only_for_the_same_tensorrt_gpu_and_a_covered_bound(tmp_path: Path) -> None:
    assert not serve_gpu.engines_usable(tmp_path, 16, "10.5.0", "NVIDIA H100 80GB HBM3")
    write_engines(tmp_path, max_running_requests=16, tensorrt_version="10.5.0", device="NVIDIA H100 80GB HBM3",
                  engines={})
    assert serve_gpu.engines_usable(tmp_path, 16, "10.5.0", "NVIDIA H100 80GB HBM3")
    assert serve_gpu.engines_usable(tmp_path, 8, "10.5.0", "NVIDIA H100 80GB HBM3")
    assert not serve_gpu.engines_usable(tmp_path, 32, "10.5.0", "NVIDIA H100 80GB HBM3")
    assert not serve_gpu.engines_usable(tmp_path, 16, "10.6.0", "NVIDIA H100 80GB HBM3")
    assert not serve_gpu.engines_usable(tmp_path, 16, "10.5.0", "NVIDIA A100-SXM4-80GB")


def test_without_tensorrt_auto_serves_the_torch_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise TensorRTUnavailable("no tensorrt")

    monkeypatch.setattr(serve_gpu, "import_tensorrt", missing)
    assert serve_gpu.choose_target("auto") == "gpu-torch"
    assert serve_gpu.choose_target("gpu") == "gpu"
    monkeypatch.setattr(serve_gpu, "import_tensorrt", lambda: object())
    assert serve_gpu.choose_target("auto") == "gpu"


def test_chunking_follows_where_the_loop_keeps_its_tensors() -> None:
    """Exact stages when the activations stay on the GPU; tiles when the loop would carry them through the host."""
    assert serve_gpu.default_vae_chunking(serve_gpu.GPU_LOOP_TENSORS) == "stages"
    assert serve_gpu.default_vae_chunking("torch:cuda:1") == "stages"
    assert serve_gpu.default_vae_chunking("numpy") == "tiles:2x2:4"


def test_the_synerdiff_policies_get_a_profile_of_the_torch_models_on_this_gpu(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    measured: list[tuple[Path, str]] = []

    def serving_profile(model_dir: Path, settings: object, runtime: str) -> Path:
        measured.append((model_dir, runtime))
        return model_dir / "profiles" / "p.json"

    monkeypatch.setattr(serve_gpu, "serving_profile", serving_profile)
    settings = serve_gpu.ServingSettings(policy="synerdiff")
    assert serve_gpu.gpu_profile(tmp_path, "gpu-torch", settings) == tmp_path / "profiles" / "p.json"
    assert measured == [(tmp_path, "torch:cuda")]
    with pytest.raises(SystemExit, match="needs --profile .* TensorRT engines"):
        serve_gpu.gpu_profile(tmp_path, "gpu", settings)


@pytest.mark.parametrize(("target", "on_gpu"), [("cpu", False), ("cpu-torch", False), ("gpu-torch", True),
                                                 ("gpu", True)])
def test_a_measured_server_of_a_gpu_target_gets_the_pools_and_gpu_metrics(tiny_dir: Path, target: str,
                                                                          on_gpu: bool) -> None:
    served = served_target(target, tiny_dir, serve_gpu.ServingSettings())
    assert served.gpu_metrics == on_gpu
    assert any(flag.startswith("--cuda-memory-pool-byte-size=") for flag in served.server_flags) == on_gpu
