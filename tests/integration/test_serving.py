"""End to end against the real tritonserver: images over gRPC streaming, the ensemble, HTTP infer, the CLI;
step-level continuous batching that is bit-exact against requests run alone; bad input; cancellation."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from client import DiffusionClient, GenerationError, GenerationRequest
from perf.server import TritonServer
from tests.integration.conftest import metric_value

pytestmark = pytest.mark.integration


def grpc_client(server: TritonServer, model: str | None = None) -> DiffusionClient:
    return DiffusionClient(server.ports.grpc_url, "grpc", model)


def test_grpc_stream_returns_an_image_of_the_requested_size_with_progress(server: TritonServer) -> None:
    steps_seen: list[int] = []
    result = grpc_client(server).generate(
        GenerationRequest(prompt="a red fox in the snow", num_steps=5, seed=3, height=48, width=80),
        on_progress=lambda done, total: steps_seen.append(done))
    assert result.image.shape == (48, 80, 3) and result.image.dtype == np.uint8
    assert result.seed == 3 and result.num_steps == 5
    assert steps_seen == [1, 2, 3, 4, 5]


def test_ensemble_and_direct_model_give_the_same_image(server: TritonServer) -> None:
    request = GenerationRequest(prompt="a lighthouse at dusk", num_steps=4, seed=11, sampler="euler")
    direct = grpc_client(server).generate(request)
    ensemble = grpc_client(server, "txt2img").generate(request, on_progress=lambda done, total: None)
    assert np.array_equal(direct.image, ensemble.image)


def test_http_infer_returns_the_same_image_as_grpc(server: TritonServer) -> None:
    request = GenerationRequest(prompt="a lighthouse at dusk", num_steps=3, seed=5, guidance_scale=1.0)
    over_http = DiffusionClient(server.ports.http_url, "http").generate(request)
    over_grpc = grpc_client(server).generate(request)
    assert np.array_equal(over_http.image, over_grpc.image)


def test_unset_seed_is_drawn_and_reported(server: TritonServer) -> None:
    first = grpc_client(server).generate(GenerationRequest(prompt="a cat", num_steps=2))
    again = grpc_client(server).generate(GenerationRequest(prompt="a cat", num_steps=2, seed=first.seed))
    assert np.array_equal(first.image, again.image)


def test_cli_writes_a_png_of_the_requested_size(server: TritonServer, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "client", "generate", "a tiny robot", "--steps", "3", "--seed", "9",
         "--height", "64", "--width", "32", "--url", server.ports.grpc_url, "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (png,) = tmp_path.glob("*.png")
    with Image.open(png) as image:
        assert image.size == (32, 64) and image.mode == "RGB"


# -- continuous batching ---------------------------------------------------------------------------

MIXED_REQUESTS = [
    GenerationRequest(prompt=f"prompt number {i}", num_steps=steps, guidance_scale=guidance, seed=100 + i,
                      sampler=sampler)
    for i, (steps, guidance, sampler) in enumerate([
        (4, 7.5, "ddim"), (20, 1.0, "ddim"), (9, 5.0, "euler"), (13, 7.5, "ddim"),
        (6, 1.0, "euler"), (17, 3.0, "ddim"), (11, 7.5, "euler"), (8, 0.0, "ddim")])
]


def test_concurrent_staggered_requests_are_batched_and_bit_equal_to_running_alone(server: TritonServer) -> None:
    alone = [grpc_client(server).generate(request).image for request in MIXED_REQUESTS]
    mixed_before = metric_value(server, "synerdiff_mixed_timestep_unet_calls_total")

    def staggered(index: int) -> np.ndarray:
        time.sleep(0.03 * index)  # arrive while the others are mid-denoise
        return grpc_client(server).generate(MIXED_REQUESTS[index]).image

    with ThreadPoolExecutor(len(MIXED_REQUESTS)) as pool:
        together = list(pool.map(staggered, range(len(MIXED_REQUESTS))))

    for index, (single, batched) in enumerate(zip(alone, together)):
        assert np.array_equal(single, batched), f"request {index} differs when batched"
    assert metric_value(server, "synerdiff_mixed_timestep_unet_calls_total") > mixed_before
    rows_sum = metric_value(server, "synerdiff_unet_rows_per_step_sum")
    rows_count = metric_value(server, "synerdiff_unet_rows_per_step_count")
    assert rows_sum > rows_count, "some UNet step carried more than one row"


# -- bad input --------------------------------------------------------------------------------------

def _inputs(**fields: tuple[str, object]) -> list[grpcclient.InferInput]:
    dtypes = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}
    inputs = []
    for name, (datatype, value) in fields.items():
        array = np.array([value], dtype=dtypes[datatype])
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


GOOD = {"PROMPT": ("BYTES", b"a cat"), "STEPS": ("INT32", 2)}
BAD_INPUTS = [
    ("PROMPT", {"PROMPT": ("BYTES", b"")}),
    ("PROMPT", {"PROMPT": ("BYTES", b"x" * 5000)}),
    ("PROMPT", {"PROMPT": ("BYTES", b"\xff\xfe")}),
    ("STEPS", {"STEPS": ("INT32", 0)}),
    ("STEPS", {"STEPS": ("INT32", 10000)}),
    ("GUIDANCE_SCALE", {"GUIDANCE_SCALE": ("FP32", float("nan"))}),
    ("HEIGHT", {"HEIGHT": ("INT32", 60)}),
    ("WIDTH", {"WIDTH": ("INT32", 4096)}),
    ("SEED", {"SEED": ("INT64", -1)}),
    ("SAMPLER", {"SAMPLER": ("BYTES", b"plms")}),
    ("STEPS", {"STEPS": ("INT64", 20)}),  # wrong dtype: Triton itself rejects it, naming the input
]


@pytest.mark.parametrize("model", ["diffusion", "txt2img"])
@pytest.mark.parametrize(("field", "override"), BAD_INPUTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_rejected_with_invalid_argument_naming_the_field(
        server: TritonServer, model: str, field: str, override: dict[str, tuple[str, object]]) -> None:
    if model == "txt2img" and field == "PROMPT" and override["PROMPT"][1] == b"":
        pass  # same check, made by preprocess inside the ensemble
    errors: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.ports.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: errors.put(error))
        client.async_stream_infer(model, _inputs(**{**GOOD, **override}))
        error = errors.get(timeout=60)
    finally:
        client.stop_stream()
        client.close()
    assert isinstance(error, InferenceServerException)
    assert field in error.message()
    assert "Traceback" not in error.message() and "/work/" not in error.message()


def test_bad_input_over_http_is_a_400_naming_the_field(server: TritonServer) -> None:
    client = httpclient.InferenceServerClient(server.ports.http_url)
    inputs = []
    for name, (datatype, value) in {"PROMPT": ("BYTES", b"a cat"), "STEPS": ("INT32", 0)}.items():
        tensor = httpclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else np.int32))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("txt2img_unary", inputs)
    client.close()
    assert raised.value.status() == "400" and "STEPS" in raised.value.message()


def test_invalid_argument_through_the_client_api_and_server_keeps_serving(server: TritonServer) -> None:
    with pytest.raises(GenerationError) as raised:
        grpc_client(server).generate(GenerationRequest(prompt="a cat", num_steps=3, guidance_scale=float("inf")))
    assert raised.value.code == "INVALID_ARGUMENT" and "GUIDANCE_SCALE" in raised.value.message
    assert grpc_client(server).generate(GenerationRequest(prompt="a cat", num_steps=2)).image.shape == (64, 64, 3)


# -- cancellation -----------------------------------------------------------------------------------

def test_grpc_cancel_stops_the_work_within_one_step_and_others_are_unaffected(server: TritonServer) -> None:
    bystander_request = GenerationRequest(prompt="the bystander", num_steps=30, seed=42)
    expected = grpc_client(server).generate(bystander_request).image
    cancelled_before = metric_value(server, "synerdiff_requests_total", 'outcome="cancelled"')

    with ThreadPoolExecutor(1) as pool:
        bystander = pool.submit(grpc_client(server).generate, bystander_request)
        steps_seen: list[int] = []
        cancel = threading.Event()

        def on_progress(done: int, total: int | None) -> None:
            steps_seen.append(done)
            if done == 3:
                cancel.set()

        with pytest.raises(GenerationError) as raised:
            grpc_client(server).generate(GenerationRequest(prompt="to be cancelled", num_steps=150, seed=1),
                                         on_progress=on_progress, cancel=cancel)
        assert raised.value.code == "CANCELLED"
        assert np.array_equal(bystander.result(timeout=120).image, expected)

    assert metric_value(server, "synerdiff_requests_total", 'outcome="cancelled"') == cancelled_before + 1
    assert max(steps_seen) < 150


def test_cancelled_request_does_no_more_work_after_its_final_response(server: TritonServer) -> None:
    steps_before = metric_value(server, "synerdiff_unet_rows_per_step_count")
    cancel = threading.Event()
    seen_at_cancel: list[int] = []

    def on_progress(done: int, total: int | None) -> None:
        if done == 5 and not cancel.is_set():
            seen_at_cancel.append(done)
            cancel.set()

    with pytest.raises(GenerationError):
        grpc_client(server).generate(GenerationRequest(prompt="alone", num_steps=150, seed=2),
                                     on_progress=on_progress, cancel=cancel)
    time.sleep(0.5)
    steps_done = metric_value(server, "synerdiff_unet_rows_per_step_count") - steps_before
    time.sleep(0.5)
    assert metric_value(server, "synerdiff_unet_rows_per_step_count") - steps_before == steps_done, \
        "the cancelled request kept stepping"
    # The client saw step 5 and cancelled. While the cancel travels the server may finish the step in
    # flight and start one more; it checks for cancellation before every step, so it stops there.
    assert seen_at_cancel == [5] and steps_done <= 5 + 2
