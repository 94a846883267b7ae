"""The torch fallback on the real tritonserver: target `cpu-torch` serves the `gpu-torch` models (the export's
diffusers/transformers modules as Python models) on the CPU in float32, so the route a GPU without TensorRT takes is
exercised here end to end, and its images match those of target `cpu` (ONNX Runtime on the same weights).

About 15 s on 2 cores (a second server, two small requests).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from client import DiffusionClient, GenerationRequest
from export.render import ServingSettings, render_repository
from perf.server import Ports, TritonServer, free_ports
from tests.integration.conftest import BUILD

pytestmark = pytest.mark.integration

REQUESTS = [
    GenerationRequest(prompt="a red fox", num_steps=4, guidance_scale=7.5, seed=31),
    GenerationRequest(prompt="a grey cat", num_steps=3, guidance_scale=1.0, seed=32, height=48, width=80,
                      sampler="euler"),
]
# float32 torch and ONNX Runtime differ by about 1e-6 per call (tests/unit/test_torch_runner.py); after a few
# steps and the uint8 rounding of the image that is at most one level on a few pixels.
MAX_LEVEL_DIFFERENCE = 2


@pytest.fixture(scope="module")
def torch_server(tiny_models: Path) -> Iterator[TritonServer]:
    name = f"cpu-torch-{os.getpid()}"  # test sessions side by side never share a repository
    repository = render_repository(tiny_models, BUILD / "test-repositories" / name, "cpu-torch",
                                   ServingSettings(policy="continuous", max_running_requests=4))
    log = BUILD / "test-logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    running = TritonServer(repository, Ports(*free_ports(3)), log).start()
    yield running
    running.stop()


@pytest.mark.parametrize("request_", REQUESTS, ids=["guided-ddim", "unguided-euler-48x80"])
def test_torch_models_serve_the_images_of_the_onnx_models(torch_server: TritonServer, server: TritonServer,
                                                          request_: GenerationRequest) -> None:
    from_torch = DiffusionClient(torch_server.ports.grpc_url).generate(request_, timeout_s=60).image
    from_onnx = DiffusionClient(server.ports.grpc_url).generate(request_, timeout_s=60).image
    assert from_torch.shape == from_onnx.shape == (request_.height or 64, request_.width or 64, 3)
    difference = np.abs(from_torch.astype(np.int16) - from_onnx.astype(np.int16))
    assert difference.max() <= MAX_LEVEL_DIFFERENCE, f"max difference {difference.max()} levels"


def test_requests_finishing_together_are_decoded_in_one_batch_and_match(torch_server: TritonServer,
                                                                         server: TritonServer) -> None:
    """Three requests sent at once finish on the same step, so their decodes share one vae_decoder call: the torch
    model must answer the batch in the C order Triton takes (torch's CPU convolutions answer it channels-last)."""
    batch = [GenerationRequest(prompt=f"a boat {seed}", num_steps=3, guidance_scale=7.5, seed=seed)
             for seed in (41, 42, 43)]

    def generate(url: str, request_: GenerationRequest) -> np.ndarray:
        return DiffusionClient(url).generate(request_, timeout_s=60).image

    with ThreadPoolExecutor(len(batch)) as pool:
        from_torch = list(pool.map(lambda r: generate(torch_server.ports.grpc_url, r), batch))
    for request_, image in zip(batch, from_torch):
        reference = generate(server.ports.grpc_url, request_)
        assert np.abs(image.astype(np.int16) - reference.astype(np.int16)).max() <= MAX_LEVEL_DIFFERENCE
