"""TensorRT on a GPU: the engines of the `gpu` target build from the tiny export (export/tensorrt_build.py) and
compute what ONNX Runtime computes, row by row with a timestep per row, under every optimization profile; inside the
NGC container, the rendered `gpu` repository serves an image. Skipped without CUDA, without the `tensorrt` package,
and (the served test) outside the container."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.engine_profiles import engine_specs
from export.tensorrt_build import build_engines, engine_dir

pytestmark = pytest.mark.gpu

MAX_RUNNING = 2  # UNet profiles for rows 1-2 and 3-4: small engines, quick builds
FP16_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def trt() -> Any:
    return pytest.importorskip("tensorrt")


@pytest.fixture(scope="module")
def engines(trt: Any, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    export = tmp_path_factory.mktemp("export") / "tiny"
    shutil.copytree(tiny_dir, export)
    build_engines(export, MAX_RUNNING, log=lambda _: None, trt=trt, device_name=torch.cuda.get_device_name(0))
    return export


def run_engine(trt: Any, plan: Path, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    """One call of an engine through the TensorRT runtime on torch CUDA buffers, on the first profile that admits
    the input shapes."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    profile = next(index for index in range(engine.num_optimization_profiles)
                   if all(all(low <= size <= high for low, size, high in
                              zip(engine.get_tensor_profile_shape(name, index)[0], array.shape,
                                  engine.get_tensor_profile_shape(name, index)[2]))
                          for name, array in feeds.items()))
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    context.set_optimization_profile_async(profile, stream.cuda_stream)
    inputs = {name: torch.from_numpy(array).cuda() for name, array in feeds.items()}
    for name, tensor in inputs.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    result = torch.empty(tuple(context.get_tensor_shape(output)), dtype=torch.float32, device="cuda")
    context.set_tensor_address(output, result.data_ptr())
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return result.cpu().numpy()


def onnx_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def assert_close_fp16(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert float(np.abs(ours - reference).max()) <= FP16_TOLERANCE * max(1.0, float(np.abs(reference).max()))


def test_engines_and_their_record(engines: Path, trt: Any) -> None:
    info = json.loads((engine_dir(engines) / "engines.json").read_text())
    manifest = json.loads((engines / "manifest.json").read_text())
    assert sorted(info["engines"]) == sorted(spec.model for spec in engine_specs(manifest, MAX_RUNNING))
    assert info["tensorrt_version"] == trt.__version__ and info["device"] == torch.cuda.get_device_name(0)
    assert (engine_dir(engines) / "timing.cache").stat().st_size > 0


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_unet_engine_matches_onnx_with_a_timestep_per_row(engines: Path, trt: Any, rows: int) -> None:
    rng = np.random.default_rng(rows)
    sample = rng.standard_normal((rows, 4, 16, 24), dtype=np.float32)
    timesteps = np.linspace(999, 1, rows, dtype=np.float32)
    text = rng.standard_normal((rows, 77, 32), dtype=np.float32)
    ours = run_engine(trt, engine_dir(engines) / "unet.plan",
                      {"SAMPLE": sample, "TIMESTEP": timesteps, "ENCODER_HIDDEN_STATES": text}, "NOISE_PRED")
    reference = onnx_run(engines / "unet.onnx", {"sample": sample, "timestep": timesteps,
                                                 "encoder_hidden_states": text})
    assert_close_fp16(ours, reference)


def test_vae_engines_match_onnx(engines: Path, trt: Any) -> None:
    latent = np.random.default_rng(0).standard_normal((2, 4, 16, 16), dtype=np.float32)
    image = run_engine(trt, engine_dir(engines) / "vae_decoder.plan", {"LATENT": latent}, "IMAGE")
    assert_close_fp16(image, onnx_run(engines / "vae_decoder.onnx", {"latent": latent}))
    hidden = latent
    for stage in range(3):
        hidden = run_engine(trt, engine_dir(engines) / f"vae_stage_{stage}.plan", {"HIDDEN": hidden}, "HIDDEN_OUT")
    assert_close_fp16(hidden, onnx_run(engines / "vae_decoder.onnx", {"latent": latent}))


def test_text_encoder_engine_matches_onnx(engines: Path, trt: Any) -> None:
    ids = np.full((2, 77), 49407, dtype=np.int64)
    ids[:, 0], ids[1, 1:4] = 49406, [320, 1125, 539]
    ours = run_engine(trt, engine_dir(engines) / "text_encoder.plan", {"TOKEN_IDS": ids}, "EMBEDDINGS")
    assert_close_fp16(ours, onnx_run(engines / "text_encoder.onnx", {"input_ids": ids}))


CONTAINER_SERVER = Path("/opt/tritonserver/bin/tritonserver")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def is_ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.skipif(not CONTAINER_SERVER.exists(), reason="the TensorRT backend is in the NGC container only")
def test_served_gpu_repository_gives_an_image(engines: Path, tmp_path: Path) -> None:
    from client import DiffusionClient, GenerationRequest
    from export.gpu_memory import memory_pools
    from export.render import ServingSettings, render_repository
    from perf.serve_gpu import gpu_server_command

    settings = ServingSettings(policy="continuous", max_running_requests=MAX_RUNNING, vae_chunking="stages")
    repository = render_repository(engines, tmp_path / "repository", "gpu", settings)
    manifest = json.loads((engines / "manifest.json").read_text())
    http, grpc, metrics = free_ports(3)  # perf.server needs the pytriton wheel, which the container lacks
    command = gpu_server_command(repository, memory_pools(manifest, MAX_RUNNING), ports=(http, grpc, metrics))
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not is_ready(http):
            assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        request = GenerationRequest(prompt="a red fox", num_steps=4, seed=51)
        result = DiffusionClient(f"127.0.0.1:{grpc}").generate(request, timeout_s=120)
        assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
    finally:
        server.terminate()
        server.wait(timeout=60)
