"""Where the loop keeps its tensors, on the real tritonserver: with `loop_tensors` torch:cpu the `diffusion` loop holds
torch tensors and hands them to the models and takes them back through DLPack (`pb_utils.Tensor.from_dlpack`,
`preferred_memory`), the route a GPU loop takes with torch:cuda; its images equal those of the numpy loop of the
session's `server` bit for bit (same ONNX models, same policy).

About 10 s on 2 cores (a second server, three small requests).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from client import DiffusionClient, GenerationRequest
from export.render import ServingSettings
from perf.server import TritonServer
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration

REQUESTS = [
    GenerationRequest(prompt="a red fox", num_steps=4, guidance_scale=7.5, seed=41),
    GenerationRequest(prompt="a grey cat", num_steps=3, guidance_scale=1.0, seed=42, height=48, width=80,
                      sampler="euler"),
    GenerationRequest(prompt="a blue bird", negative_prompt="blurry", num_steps=5, guidance_scale=4.0, seed=43,
                      height=80, width=48),
]


@pytest.fixture(scope="module")
def torch_loop_server(tiny_models: Path) -> Iterator[TritonServer]:
    running = start_server(tiny_models, "torch-loop", ServingSettings(policy="continuous", max_running_requests=16,
                                                                      loop_tensors="torch:cpu"))
    yield running
    running.stop()


def test_the_loop_runs_on_torch_tensors(torch_loop_server: TritonServer) -> None:
    assert torch_loop_server.log_path is not None
    assert "tensors torch:cpu" in torch_loop_server.log_path.read_text()  # the loop said where its tensors live


@pytest.mark.parametrize("request_", REQUESTS, ids=["guided-ddim", "unguided-euler-48x80", "negative-80x48"])
def test_a_torch_loop_serves_the_numpy_loops_images_bit_for_bit(torch_loop_server: TritonServer,
                                                                server: TritonServer,
                                                                request_: GenerationRequest) -> None:
    on_torch = DiffusionClient(torch_loop_server.ports.grpc_url).generate(request_, timeout_s=60).image
    on_numpy = DiffusionClient(server.ports.grpc_url).generate(request_, timeout_s=60).image
    assert on_torch.shape == (request_.height or 64, request_.width or 64, 3)
    assert np.array_equal(on_torch, on_numpy)


def test_a_torch_loop_batches_concurrent_requests_into_the_same_images(torch_loop_server: TritonServer,
                                                                       server: TritonServer) -> None:
    client = DiffusionClient(torch_loop_server.ports.grpc_url)
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda request_: client.generate(request_, timeout_s=120), REQUESTS))
    for request_, result in zip(REQUESTS, together):
        assert np.array_equal(result.image, DiffusionClient(server.ports.grpc_url).generate(request_).image)
