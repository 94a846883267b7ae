"""Every serving policy on the real tritonserver: concurrent requests come back right, and the SynerDiff
metrics are on /metrics while it works."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from client import DiffusionClient, GenerationRequest
from export.render import ServingSettings
from perf.server import TritonServer
from scheduler_backend.policies import POLICIES
from tests.integration.conftest import metric_value, start_server

pytestmark = pytest.mark.integration

REQUESTS = [
    GenerationRequest(prompt="a red fox", num_steps=10, guidance_scale=7.5, seed=21),
    GenerationRequest(prompt="a blue bird", num_steps=4, guidance_scale=1.0, seed=22),
    GenerationRequest(prompt="a green frog", num_steps=8, guidance_scale=5.0, seed=23, sampler="euler"),
    GenerationRequest(prompt="a grey cat", num_steps=6, guidance_scale=0.0, seed=24, height=48, width=80),
    GenerationRequest(prompt="an old tree", num_steps=12, guidance_scale=7.5, seed=25),
]
# Policies whose images must equal a request run alone: no Skip-CFG, and exact VAE chunks (stages).
EXACT = {"sequential", "static", "continuous", "synerdiff-no-skip-cfg"}
SYNERDIFF_METRICS = ("synerdiff_unet_threshold", "synerdiff_vae_chunk_backlog", "synerdiff_waiting_requests",
                     "synerdiff_running_requests", "synerdiff_skip_cfg_rows_total", "synerdiff_vae_chunks_total",
                     "synerdiff_unet_rows_per_step_count", "synerdiff_step_latency_seconds_count",
                     "synerdiff_request_latency_seconds_count", "synerdiff_planning_seconds_count")


@pytest.fixture(scope="module")
def alone(server: TritonServer) -> list[np.ndarray]:
    """Each request run by itself on the continuous server."""
    client = DiffusionClient(server.ports.grpc_url, "grpc")
    return [client.generate(request).image for request in REQUESTS]


def metrics_text(server: TritonServer) -> str:
    with urllib.request.urlopen(server.ports.metrics_url, timeout=5) as reply:
        return reply.read().decode()


def eventually(read: Callable[[], float], expected: float, within_s: float = 3.0) -> float:
    """A metric's value once it equals `expected` (or at the deadline): the loop records a step's metrics
    just after sending the step's responses, so a client can see its image a moment before the counter."""
    deadline = time.monotonic() + within_s
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_serves_concurrent_requests(tiny_models: Path, alone: list[np.ndarray], policy: str) -> None:
    server = start_server(tiny_models, f"policy-{policy}", ServingSettings(policy=policy, max_running_requests=4))
    try:
        client = DiffusionClient(server.ports.grpc_url, "grpc")
        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            futures = [pool.submit(client.generate, request) for request in REQUESTS]
            midway = metrics_text(server)  # while the requests are being served
            images = [future.result(timeout=120).image for future in futures]
        for request, image, reference in zip(REQUESTS, images, alone):
            assert image.shape == reference.shape
            if policy in EXACT or request.guidance_scale <= 1.0:  # unguided requests never skip
                assert np.array_equal(image, reference), f"{policy}: {request.prompt}"
        successes = eventually(lambda: metric_value(server, "synerdiff_requests_total", 'outcome="success"'),
                               len(REQUESTS))
        assert successes == len(REQUESTS)
        if policy.startswith("synerdiff"):
            assert all(name in midway for name in SYNERDIFF_METRICS if not name.endswith("_count"))
            assert metric_value(server, "synerdiff_unet_threshold") >= 0.7
            assert metric_value(server, "synerdiff_planning_seconds_count") > 0
            chunks_per_image = 1 if policy == "synerdiff-no-chunking" else 3  # tiny's VAE has 3 stages
            expected = chunks_per_image * len(REQUESTS)
            assert eventually(lambda: metric_value(server, "synerdiff_vae_chunks_total"), expected) == expected
            assert metric_value(server, "synerdiff_vae_chunk_backlog") == 0
    finally:
        server.stop()
