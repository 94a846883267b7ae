"""Reliability against the real tritonserver: one final response per request on every path, overload, queue
timeout, cancellation (waiting, mid-denoise, mid-VAE, HTTP stop-by-request-id), model faults, a killed stub,
and SIGTERM with requests in flight (research/style_and_reliability.md part B, cases 1-3, 7-9, 13, 15, 16).

Faults are injected by test-only models (tests/integration/fault_models/) copied over the real `unet` and
`vae_stages` of a rendered repository: the serving code under test is the real one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.api import DiffusionClient, infer_inputs
from client.contract import FINAL_FLAG_PARAMETER, GenerationRequest
from client.errors import GenerationError
from export.render import ServingSettings
from perf.loadgen import replay
from perf.server import TritonServer, is_alive
from perf.workload import Arrival
from tests.integration.conftest import metric_value, start_server, wait_until_idle
from tests.integration.fault_models.faulty_unet import FAULT_SENTINEL

FAULT_MODELS = Path(__file__).parent / "fault_models"
FINAL_WAIT_S = 120.0


# -- one request on its own stream, every response counted -------------------------------------------


@dataclass
class Stream:
    """One request on its own gRPC stream. Every response is recorded; an error response is final too.

    Without the `triton_grpc_error` header the server's error responses arrive in-band (no gRPC status), so
    an error with a gRPC status is the stream itself ending; after the final response it is not counted."""

    server: TritonServer
    inputs: list[Any]
    model: str = "diffusion"
    request_id: str = ""
    parameters: dict[str, Any] | None = None
    steps_seen: list[int] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    errors: list[InferenceServerException] = field(default_factory=list)
    finals: int = 0
    _final: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._client = grpcclient.InferenceServerClient(self.server.ports.grpc_url)
        self._client.start_stream(callback=self._on_response)
        self._client.async_stream_infer(self.model, self.inputs, request_id=self.request_id,
                                        parameters=self.parameters, enable_empty_final_response=True)

    def _on_response(self, result: Any, error: InferenceServerException | None) -> None:
        if error is not None:
            if self._final.is_set() and str(error.status()).startswith("StatusCode."):
                return  # the transport closing after the final response (the server went away): not a response
            self.errors.append(error)
            self._final.set()
            return
        image = result.as_numpy("IMAGE")
        if image is not None and image.size:
            self.images.append(image)
        step = result.as_numpy("STEP")
        if step is not None and not (image is not None and image.size):
            self.steps_seen.append(int(step[0]))
        if result.get_response().parameters[FINAL_FLAG_PARAMETER].bool_param:
            self.finals += 1
            self._final.set()

    def wait_for_step(self, step: int, timeout_s: float = FINAL_WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not (self.steps_seen and self.steps_seen[-1] >= step):
            assert time.monotonic() < deadline, f"step {step} not reached (seen {self.steps_seen[-3:]})"
            assert not self._final.is_set(), f"ended before step {step}: {self.errors}"
            time.sleep(0.01)

    def outcome(self, timeout_s: float = FINAL_WAIT_S) -> np.ndarray | InferenceServerException:
        """The one final outcome (image or error); asserts nothing else final came, even a little later."""
        assert self._final.wait(timeout_s), "no final response"
        time.sleep(0.3)  # anything sent after the final would arrive by now
        finals = self.finals + len(self.errors)
        assert finals == 1, f"{finals} final responses: {[(e.status(), e.message()) for e in self.errors]}"
        return self.errors[0] if self.errors else self.images[-1]

    def cancel(self) -> None:
        self._client.stop_stream(cancel_requests=True)

    def close(self) -> None:
        self._client.stop_stream(cancel_requests=not self._final.is_set())
        self._client.close()


def grpc_inputs(prompt: str = "a cat", steps: int = 5, seed: int = 0, **fields: Any) -> list[Any]:
    request = GenerationRequest(prompt=prompt, num_steps=steps, seed=seed, **fields)
    return infer_inputs(grpcclient.InferInput, request, progress=True)


def embeds_inputs(server_spec: tuple[int, int], steps: int, sentinel: bool) -> list[Any]:
    """PROMPT_EMBEDS inputs (no text encoding, so the request joins the queue at once); with `sentinel`, the
    faulty unet raises on it."""
    embeddings = np.random.default_rng(0).standard_normal((2, *server_spec)).astype(np.float32)
    if sentinel:
        embeddings[:, 0, 0] = FAULT_SENTINEL
    arrays = {"PROMPT_EMBEDS": embeddings, "STEPS": np.array([steps], np.int32), "PROGRESS": np.array([True])}
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), {np.float32: "FP32", np.int32: "INT32",
                                                                  np.bool_: "BOOL"}[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def assert_clean_message(message: str) -> None:
    for leak in ("Traceback", "/work/", ".py", "triton_python_backend_shm"):
        assert leak not in message, f"{leak!r} leaked to the client: {message}"


def eventually(condition: Callable[[], bool], failure: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def serves_an_image(server: TritonServer) -> None:
    image = DiffusionClient(server.ports.grpc_url).generate(GenerationRequest(prompt="after", num_steps=2)).image
    assert image.shape == (64, 64, 3)


def server_regions(server: TritonServer) -> set[str]:
    return {stub.shm_region for stub in server.stubs if stub.shm_region}


# -- overload ---------------------------------------------------------------------------------------


def test_a_burst_of_500_against_a_bound_of_64_gets_images_or_unavailable_and_none_is_lost(
        server: TritonServer) -> None:
    rejected_before = metric_value(server, "synerdiff_requests_total", 'outcome="rejected_overload"')
    arrivals = [Arrival(0.0, num_steps=4, guidance_scale=7.5, seed=i) for i in range(500)]
    records = asyncio.run(replay(server.ports.grpc_url, arrivals, progress=False, timeout_s=300))

    outcomes = [record.outcome for record in records]
    assert len(records) == 500
    assert set(outcomes) <= {"image", "rejected"}, {o: outcomes.count(o) for o in set(outcomes)}
    images, rejected = outcomes.count("image"), outcomes.count("rejected")
    assert images + rejected == 500 and images >= 64 and rejected > 0
    assert metric_value(server, "synerdiff_requests_total", 'outcome="rejected_overload"') - rejected_before == rejected
    wait_until_idle(server)
    assert server.is_ready()
    serves_an_image(server)


# -- a server with the fault models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_server(tiny_models: Path) -> Iterator[TritonServer]:
    """Two requests running at most; `unet` raises on the sentinel; each (whole) VAE decode takes 1 s."""
    settings = ServingSettings(policy="continuous", max_running_requests=2, max_waiting_requests=4)
    server = start_server(tiny_models, "faulty", settings, before_start=install_fault_models)
    yield server
    server.stop()


def install_fault_models(repository: Path) -> None:
    shutil.copy(FAULT_MODELS / "faulty_unet.py", repository / "unet" / "1" / "model.py")
    shutil.copy(FAULT_MODELS / "slow_vae_decoder.py", repository / "vae_decoder" / "1" / "model.py")


def text_shape(server: TritonServer) -> tuple[int, int]:
    config = grpcclient.InferenceServerClient(server.ports.grpc_url).get_model_config("diffusion", as_json=True)
    dims = next(i["dims"] for i in config["config"]["input"] if i["name"] == "PROMPT_EMBEDS")
    return int(dims[1]), int(dims[2])


def test_a_model_raising_in_a_step_fails_only_the_requests_of_that_step(faulty_server: TritonServer) -> None:
    shape = text_shape(faulty_server)
    running = Stream(faulty_server, embeds_inputs(shape, steps=150, sentinel=False))
    try:
        running.wait_for_step(2)
        poisoned = Stream(faulty_server, embeds_inputs(shape, steps=5, sentinel=True))
        time.sleep(0.1)
        waiting = Stream(faulty_server, embeds_inputs(shape, steps=3, sentinel=False))  # third: waits its turn
        for stream in (poisoned, running):
            error = stream.outcome()
            assert isinstance(error, InferenceServerException), "a request of the failing step survived"
            assert "unet failed" in error.message() and "injected fault" in error.message()
            assert_clean_message(error.message())
        image = waiting.outcome()
        assert isinstance(image, np.ndarray) and image.shape == (64, 64, 3)
    finally:
        for stream in (running, poisoned, waiting):
            stream.close()
    wait_until_idle(faulty_server)
    serves_an_image(faulty_server)


def test_cancel_while_waiting_ends_it_before_it_runs(faulty_server: TritonServer) -> None:
    shape = text_shape(faulty_server)
    cancelled_before = metric_value(faulty_server, "synerdiff_requests_total", 'outcome="cancelled"')
    running = [Stream(faulty_server, embeds_inputs(shape, steps=150, sentinel=False)) for _ in range(2)]
    try:
        for stream in running:
            stream.wait_for_step(1)
        waiting = Stream(faulty_server, grpc_inputs(steps=5))
        eventually(lambda: metric_value(faulty_server, "synerdiff_waiting_requests") == 1, "it never queued", 30)
        waiting.cancel()
        eventually(lambda: metric_value(faulty_server, "synerdiff_requests_total", 'outcome="cancelled"')
                   == cancelled_before + 1, "the waiting request was not cancelled")
        assert waiting.steps_seen == [] and waiting.images == []
        eventually(lambda: metric_value(faulty_server, "synerdiff_waiting_requests") == 0, "the queue kept it")
    finally:
        for stream in running:
            stream.cancel()
            stream.close()
    wait_until_idle(faulty_server)


def test_cancel_mid_vae_stops_the_decode_and_sends_no_image(faulty_server: TritonServer) -> None:
    chunks_before = metric_value(faulty_server, "synerdiff_vae_chunks_total")
    stream = Stream(faulty_server, grpc_inputs(steps=3))
    try:
        stream.wait_for_step(3)  # denoising done: the decode (1 s) has begun
        time.sleep(0.2)
        stream.cancel()
        time.sleep(2.0)  # the decode would have finished and its image been sent by now
    finally:
        stream.close()
    assert stream.images == [], "the image was decoded and sent after the cancel"
    assert metric_value(faulty_server, "synerdiff_vae_chunks_total") - chunks_before <= 1, \
        "the decode went on after the cancel"
    wait_until_idle(faulty_server)


def test_http_client_stops_its_request_by_id(faulty_server: TritonServer) -> None:
    http = DiffusionClient(faulty_server.ports.http_url, protocol="http")
    assert http.stop("no-such-request") == 0
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            outcome["image"] = http.generate(GenerationRequest(prompt="a long one", num_steps=150), cancel=cancel)
        except GenerationError as error:
            outcome["error"] = error

    worker = threading.Thread(target=generate)
    worker.start()
    eventually(lambda: metric_value(faulty_server, "synerdiff_running_requests") == 1, "it never started", 30)
    cancelled_before = metric_value(faulty_server, "synerdiff_requests_total", 'outcome="cancelled"')
    cancel.set()  # the client stops it by its request id through the `stop` model
    worker.join(30)
    error = outcome.get("error")
    assert isinstance(error, GenerationError) and error.code == "CANCELLED"
    assert metric_value(faulty_server, "synerdiff_requests_total", 'outcome="cancelled"') == cancelled_before + 1
    wait_until_idle(faulty_server)


def test_stop_by_request_id_over_grpc_ends_the_stream_cancelled(faulty_server: TritonServer) -> None:
    stream = Stream(faulty_server, grpc_inputs(steps=150), request_id="job-42")
    try:
        stream.wait_for_step(1)
        assert DiffusionClient(faulty_server.ports.grpc_url).stop("job-42") == 1
        error = stream.outcome()
        assert isinstance(error, InferenceServerException) and "stopped by its request id" in error.message()
    finally:
        stream.close()
    assert DiffusionClient(faulty_server.ports.grpc_url).stop("job-42") == 0  # already gone
    wait_until_idle(faulty_server)


def test_a_request_waiting_past_its_queue_timeout_gets_unavailable(faulty_server: TritonServer) -> None:
    shape = text_shape(faulty_server)
    running = [Stream(faulty_server, embeds_inputs(shape, steps=150, sentinel=False)) for _ in range(2)]
    try:
        for stream in running:
            stream.wait_for_step(1)
        started = time.monotonic()
        impatient = Stream(faulty_server, grpc_inputs(steps=3), parameters={"queue_timeout_ms": 300})
        error = impatient.outcome()
        waited = time.monotonic() - started
        impatient.close()
        assert isinstance(error, InferenceServerException) and "queue timeout" in error.message()
        assert "retry later" in error.message()
        assert waited < 10
    finally:
        for stream in running:
            stream.cancel()
            stream.close()
    wait_until_idle(faulty_server)


# -- a killed stub ----------------------------------------------------------------------------------


def test_killing_the_unet_stub_fails_in_flight_requests_clearly_and_the_server_recovers(tiny_models: Path) -> None:
    server = start_server(tiny_models, "stub-kill", ServingSettings(policy="continuous"), supervise=True)
    try:
        regions_before = server_regions(server)
        unet = next(stub for stub in server.stubs if stub.instance.startswith("unet_"))
        streams = [Stream(server, grpc_inputs(steps=150, seed=i)) for i in range(3)]
        for stream in streams:
            stream.wait_for_step(1)
        os.kill(unet.pid, signal.SIGKILL)
        for stream in streams:
            error = stream.outcome(timeout_s=30)
            stream.close()
            assert isinstance(error, InferenceServerException)
            assert "unet" in error.message() and "not healthy" in error.message()
            assert_clean_message(error.message())
        eventually(lambda: server.restarts == 1 and server.is_ready(), "the server did not come back", 120)
        serves_an_image(server)
        assert not any(Path("/dev/shm", region).exists() for region in regions_before), "shm left behind"
        assert len(server_regions(server)) == len(regions_before)
    finally:
        server.stop()


def test_a_crashed_server_is_restarted_by_the_supervisor(tiny_models: Path) -> None:
    """tritonserver itself dying (2.51's gRPC frontend can SIGSEGV; see test_input_hostility.py) is met like a
    dead stub: the watchdog starts it again on the same ports, leaving no stub or shm of the old one."""
    server = start_server(tiny_models, "server-crash", ServingSettings(policy="continuous"), supervise=True)
    try:
        assert server.process is not None
        stubs, regions = list(server.stubs), server_regions(server)
        os.kill(server.process.pid, signal.SIGSEGV)
        eventually(lambda: server.restarts == 1 and server.is_ready(), "the server did not come back", 120)
        serves_an_image(server)
        assert not any(is_alive(stub.pid) for stub in stubs), "a stub of the crashed server lives on"
        assert not any(Path("/dev/shm", region).exists() for region in regions), "shm of the crashed server left"
    finally:
        server.stop()


# -- shutdown ---------------------------------------------------------------------------------------


def test_sigterm_with_requests_in_flight_ends_each_with_one_final_response_and_leaves_nothing(
        tiny_models: Path) -> None:
    server = start_server(tiny_models, "sigterm", ServingSettings(policy="continuous"))
    stubs, regions = list(server.stubs), server_regions(server)
    streams = [Stream(server, grpc_inputs(steps=150, seed=i)) for i in range(4)]
    for stream in streams:
        stream.wait_for_step(1)
    started = time.monotonic()
    stopping = ThreadPoolExecutor(1).submit(server.stop)  # SIGTERM, then wait for the server to exit
    for stream in streams:  # each client closes its stream on its final response, as DiffusionClient does
        outcome = stream.outcome(timeout_s=30)
        stream.close()
        assert isinstance(outcome, InferenceServerException) and "shutting down" in outcome.message()
    code = stopping.result(timeout=60)
    took = time.monotonic() - started
    assert code == 0 and took < server.exit_timeout_s
    assert not any(is_alive(stub.pid) for stub in stubs), "a stub outlived the server"
    assert not any(Path("/dev/shm", region).exists() for region in regions)


def test_a_client_holding_its_stream_open_cannot_keep_the_server_or_a_stub_alive(tiny_models: Path) -> None:
    server = start_server(tiny_models, "open-stream", ServingSettings(policy="continuous"), exit_timeout_s=3)
    stubs, regions = list(server.stubs), server_regions(server)
    holder = Stream(server, grpc_inputs(steps=2))
    assert isinstance(holder.outcome(), np.ndarray)  # done, but the stream stays open (2.51 blocks unload)
    try:
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    finally:
        holder.close()
    assert took < server.exit_timeout_s + 12
    assert server.process is None
    assert not any(is_alive(stub.pid) for stub in stubs), "an orphaned stub was left"
    assert not any(Path("/dev/shm", region).exists() for region in regions)


# -- internal models called directly ----------------------------------------------------------------


@pytest.mark.parametrize(("model", "inputs"), [
    ("vae_decoder", {"LATENT": np.zeros((1, 4, 2048, 2048), np.float32)}),
    ("unet", {"SAMPLE": np.zeros((64, 4, 128, 128), np.float32), "TIMESTEP": np.zeros(64, np.float32),
              "ENCODER_HIDDEN_STATES": np.zeros((64, 77, 32), np.float32)}),
])
def test_an_internal_model_refuses_a_call_larger_than_the_engine_ever_makes(
        server: TritonServer, model: str, inputs: dict[str, np.ndarray]) -> None:
    client = grpcclient.InferenceServerClient(server.ports.grpc_url)
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, tensors)
    client.close()
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "too large" in raised.value.message() and max(inputs, key=lambda n: inputs[n].size) in raised.value.message()
    serves_an_image(server)
