"""The torch fallback on a GPU (targets `gpu-torch`): float16 on CUDA stays close to the float32 CPU result the
unit tests pin to ONNX Runtime, CUDA graph replays equal eager calls, and a real tritonserver serving the `gpu-torch`
repository returns the images of the `cpu` repository within float16's tolerance. Skipped without CUDA."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from model_repository.torch_runner import GraphRunner, load_graph, serving_dtype

pytestmark = pytest.mark.gpu

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")
FP16_TOLERANCE = 0.02  # relative to max(1, max |reference|): float16 keeps about 3 significant digits


def runners(tiny_dir: Path, graph: str, max_cuda_graphs: int = 0) -> tuple[GraphRunner, GraphRunner]:
    on_gpu = load_graph(tiny_dir, graph, serving_dtype(CUDA))
    on_cpu = load_graph(tiny_dir, graph, serving_dtype(CPU))
    assert isinstance(on_gpu, torch.nn.Module) and isinstance(on_cpu, torch.nn.Module)
    return GraphRunner(on_gpu, CUDA, max_cuda_graphs), GraphRunner(on_cpu, CPU)


def assert_close_fp16(ours: np.ndarray, reference: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(reference).max()))
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert float(np.abs(ours - reference).max()) <= FP16_TOLERANCE * scale


def unet_inputs(rows: int, side: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(rows)
    return [rng.standard_normal((rows, 4, side, side), dtype=np.float32),
            np.linspace(999, 1, rows, dtype=np.float32),
            rng.standard_normal((rows, 77, 32), dtype=np.float32)]


def test_fp16_unet_and_vae_on_cuda_match_fp32_on_cpu(tiny_dir: Path) -> None:
    unet_gpu, unet_cpu = runners(tiny_dir, "unet")
    inputs = unet_inputs(3)
    assert_close_fp16(unet_gpu(inputs), unet_cpu(inputs))
    vae_gpu, vae_cpu = runners(tiny_dir, "vae_decoder")
    assert_close_fp16(vae_gpu(inputs[:1]), vae_cpu(inputs[:1]))


def test_cuda_graph_replays_equal_eager_calls_and_stay_bounded(tiny_dir: Path) -> None:
    graphed, _ = runners(tiny_dir, "unet", max_cuda_graphs=2)
    eager, _ = runners(tiny_dir, "unet", max_cuda_graphs=0)
    for rows in (1, 2, 4, 1, 2, 4):  # the first two shapes are captured, the third runs eagerly
        inputs = unet_inputs(rows)
        np.testing.assert_allclose(graphed(inputs), eager(inputs), atol=1e-3)
    assert [shapes[0][0] for shapes in graphed.captured_shapes] == [1, 2]


def test_served_gpu_torch_repository_gives_the_cpu_images(tiny_dir: Path, tmp_path: Path) -> None:
    from client import DiffusionClient, GenerationRequest
    from export.render import ServingSettings, render_repository
    from perf.server import Ports, TritonServer, free_ports

    settings = ServingSettings(policy="continuous", max_running_requests=4)
    request = GenerationRequest(prompt="a red fox", num_steps=4, guidance_scale=7.5, seed=41)
    images = {}
    for target in ("cpu", "gpu-torch"):
        repository = render_repository(tiny_dir, tmp_path / target, target, settings)
        log = tmp_path / f"{target}-{os.getpid()}.log"
        with TritonServer(repository, Ports(*free_ports(3)), log) as server:
            images[target] = DiffusionClient(server.ports.grpc_url).generate(request, timeout_s=120).image
    difference = np.abs(images["gpu-torch"].astype(np.int16) - images["cpu"].astype(np.int16))
    assert images["gpu-torch"].shape == images["cpu"].shape == (64, 64, 3)
    assert float(difference.mean()) <= 2.0, f"mean difference {difference.mean():.2f} levels"


@pytest.fixture()
def no_tf32() -> Iterator[None]:
    """Keep float32 matmuls exact on Ampere and later while a test compares against the CPU."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def test_fp32_on_cuda_matches_the_cpu_closely(tiny_dir: Path, no_tf32: None) -> None:
    gpu_module, cpu_module = (load_graph(tiny_dir, "unet", torch.float32) for _ in range(2))
    assert isinstance(gpu_module, torch.nn.Module) and isinstance(cpu_module, torch.nn.Module)
    inputs = unet_inputs(2)
    np.testing.assert_allclose(GraphRunner(gpu_module, CUDA)(inputs), GraphRunner(cpu_module, CPU)(inputs), atol=1e-3)


def test_a_cuda_loop_gives_the_numpy_loops_images_bit_for_bit() -> None:
    """The engine's arithmetic on CUDA tensors (eager float32 kernels, one per operation, no fused multiply-add)
    against numpy, with the unit tests' fake models: their VAE turns a one-ulp latent difference into another
    image."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_torch_arrays import run_mixed_workload

    from model_repository.torch_arrays import TorchArrays
    from scheduler_backend.arrays import NUMPY
    from test_engine_mechanisms import STAGES, TILES

    cuda = TorchArrays("cuda")
    for chunking in (STAGES, TILES):
        on_numpy, _ = run_mixed_workload("continuous", chunking, NUMPY)
        on_cuda, _ = run_mixed_workload("continuous", chunking, cuda)
        assert on_cuda.keys() == on_numpy.keys()
        assert all(np.array_equal(on_cuda[key], on_numpy[key]) for key in on_numpy)


def test_served_loop_on_the_gpu_gives_the_host_loops_images(tiny_dir: Path, tmp_path: Path) -> None:
    """`gpu-torch` with the loop's tensors on the GPU (DLPack across BLS, outputs preferred on the GPU) and with them
    in host memory: the same models get the same inputs, so the images are the same."""
    from client import DiffusionClient, GenerationRequest
    from export.render import ServingSettings, render_repository
    from perf.server import Ports, TritonServer, free_ports

    request = GenerationRequest(prompt="a red fox", num_steps=4, guidance_scale=7.5, seed=41, height=48, width=80)
    images = {}
    for loop_tensors in ("torch:cuda", "numpy"):
        settings = ServingSettings(policy="continuous", max_running_requests=4, loop_tensors=loop_tensors)
        name = loop_tensors.replace(":", "-")
        repository = render_repository(tiny_dir, tmp_path / name, "gpu-torch", settings)
        with TritonServer(repository, Ports(*free_ports(3)), tmp_path / f"{name}-{os.getpid()}.log") as server:
            images[loop_tensors] = DiffusionClient(server.ports.grpc_url).generate(request, timeout_s=120).image
    assert np.array_equal(images["torch:cuda"], images["numpy"])
