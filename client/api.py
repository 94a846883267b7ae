"""Typed Python API for the SynerDiff text-to-image server: DiffusionClient.generate and save_png.

Job: send one GenerationRequest, report progress, honour cancellation and timeouts, and return a
GeneratedImage or raise GenerationError.

Invariants:
- gRPC: one InferenceServerClient, hence one stream, per generate() call, because an error on a
  stream does not say which request it belongs to; the stream and the client are always closed
  before generate() returns, since an open stream blocks server shutdown;
- cancellation over gRPC cancels the RPC (stop_stream(cancel_requests=True)), which makes Triton
  cancel the request server-side; HTTP has no cancellation in Triton, so there the call is only
  abandoned and the server finishes the work;
- DiffusionClient holds no connection, so one instance may serve many threads at once.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.contract import (
    MODELS_WITHOUT_PROGRESS,
    OUTPUT_NAMES,
    STOP_INPUT,
    STOP_MODEL,
    STOP_OUTPUT,
    STREAMING_MODEL,
    UNARY_MODEL,
    GeneratedImage,
    GenerationRequest,
    decode_result,
    input_arrays,
)
from client.errors import GenerationError, error_from_exception
from client.stream import ProgressCallback, StreamCollector

__all__ = [
    "DEFAULT_MODELS",
    "DiffusionClient",
    "GeneratedImage",
    "GenerationError",
    "GenerationRequest",
    "TransportProtocol",
    "save_png",
]

TransportProtocol = Literal["grpc", "http"]

# HTTP cannot stream (decoupled models refuse HTTP infer), so it defaults to the unary model.
DEFAULT_MODELS: dict[str, str] = {"grpc": STREAMING_MODEL, "http": UNARY_MODEL}

POLL_INTERVAL_S = 0.05  # how often a waiting generate() looks at its cancel event and deadline
CANCEL_GRACE_S = 5.0  # how long to wait for the stream to report CANCELLED after cancelling
DEADLINE_GRACE_S = 2.0  # the stream deadline normally fires first; this is the backstop's slack
HTTP_CONNECT_TIMEOUT_S = 10.0
HTTP_NO_TIMEOUT_S = 24 * 3600.0  # geventhttpclient needs a number; "no timeout" is a day
# Streams are opened without the `triton_grpc_error` header: with it Triton ends a stream with the error's gRPC
# status, but 2.51's gRPC frontend can crash (SIGSEGV in ModelStreamInferHandler::Process) on such streams
# (tests/integration/test_input_hostility.py). Without it an error comes in-band, and its code is read from
# the message (client/errors.py), which the server words for that ("...; retry later", "request cancelled").

InferInputType = type[grpcclient.InferInput] | type[httpclient.InferInput]


def infer_inputs(input_type: InferInputType, request: GenerationRequest, progress: bool) -> list:
    """tritonclient InferInputs (gRPC or HTTP flavour) for the inputs the request sets."""
    inputs = []
    for name, array in input_arrays(request, progress).items():
        infer_input = input_type(name, list(array.shape), np_to_triton_dtype(array.dtype))
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def _error_from_transport(exc: BaseException, url: str) -> GenerationError | None:
    """A GenerationError for an exception raised by a tritonclient call, or None to re-raise it."""
    if isinstance(exc, GenerationError):
        return exc
    if isinstance(exc, InferenceServerException):
        return error_from_exception(exc)
    if isinstance(exc, TimeoutError):  # before OSError: socket timeouts are OSErrors too
        return GenerationError("DEADLINE_EXCEEDED", f"no response from {url} in time: {exc}")
    if isinstance(exc, OSError):
        return GenerationError("UNAVAILABLE", f"cannot reach the server at {url}: {exc}")
    return None


def _past_deadline(started_s: float, timeout_s: float | None) -> bool:
    if timeout_s is None:
        return False
    return time.perf_counter() - started_s > timeout_s + DEADLINE_GRACE_S


class DiffusionClient:
    """Client of one server and model; `url` is host:port without a scheme."""

    def __init__(
        self, url: str, protocol: TransportProtocol = "grpc", model: str | None = None
    ) -> None:
        if protocol not in DEFAULT_MODELS:
            raise ValueError(f"protocol must be one of {sorted(DEFAULT_MODELS)}, got {protocol!r}")
        if "://" in url:
            raise ValueError(f"url is host:port without a scheme, got {url!r}")
        self.url = url
        self.protocol: TransportProtocol = protocol
        self.model = model or DEFAULT_MODELS[protocol]

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> GeneratedImage:
        """Generate one image.

        on_progress(steps_done, request.num_steps) is called from a stream thread after each
        denoising step (gRPC with a progress-capable model only). Setting `cancel` stops the
        request and raises GenerationError("CANCELLED") unless the image was already complete.
        """
        if cancel is not None and cancel.is_set():
            raise GenerationError("CANCELLED", "cancelled before it was sent")
        if self.protocol == "grpc":
            return self._generate_grpc(request, on_progress, cancel, timeout_s)
        return self._generate_http(request, cancel, timeout_s)

    def _generate_grpc(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        timeout_s: float | None,
    ) -> GeneratedImage:
        progress = on_progress is not None and self.model not in MODELS_WITHOUT_PROGRESS
        inputs = infer_inputs(grpcclient.InferInput, request, progress)
        collector = StreamCollector(on_progress if progress else None, request.num_steps)
        client = grpcclient.InferenceServerClient(url=self.url)
        started_s = time.perf_counter()
        try:
            client.start_stream(
                callback=collector, stream_timeout=timeout_s
            )
            try:
                client.async_stream_infer(self.model, inputs, enable_empty_final_response=True)
            except InferenceServerException:
                # The stream died before the request went out (e.g. connection refused); its
                # thread reports the cause, which beats "the stream is no longer in valid state".
                if not collector.wait(CANCEL_GRACE_S):
                    raise
            self._wait_for_stream(client, collector, cancel, started_s, timeout_s)
            image, num_steps, seed = collector.outcome()
        except InferenceServerException as exc:
            raise error_from_exception(exc) from None
        finally:
            # Unfinished (cancel, timeout, Ctrl-C in this thread): cancel it, or stop_stream would
            # wait for the server to complete it.
            client.stop_stream(cancel_requests=not collector.done)
            client.close()
        assert collector.finished_at_s is not None  # set with done
        return GeneratedImage(image, seed, num_steps, collector.finished_at_s - started_s)

    @staticmethod
    def _wait_for_stream(
        client: grpcclient.InferenceServerClient,
        collector: StreamCollector,
        cancel: threading.Event | None,
        started_s: float,
        timeout_s: float | None,
    ) -> None:
        while not collector.wait(POLL_INTERVAL_S):
            if cancel is not None and cancel.is_set():
                # stop_stream joins the stream thread, which reports CANCELLED to the collector.
                client.stop_stream(cancel_requests=True)
                if not collector.wait(CANCEL_GRACE_S):
                    raise GenerationError("CANCELLED", "cancelled by the client")
                return
            if _past_deadline(started_s, timeout_s):
                client.stop_stream(cancel_requests=True)
                raise GenerationError(
                    "DEADLINE_EXCEEDED", f"no final response within {timeout_s} s"
                )

    def _generate_http(
        self, request: GenerationRequest, cancel: threading.Event | None, timeout_s: float | None
    ) -> GeneratedImage:
        inputs = infer_inputs(httpclient.InferInput, request, progress=False)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUT_NAMES]
        request_id = uuid.uuid4().hex  # unguessable: anyone who knows it can stop the request
        finished = threading.Event()
        outcome: dict[str, object] = {}

        def call() -> None:
            # geventhttpclient ties a client to the thread's gevent hub: create, use and close it
            # in this thread. Running here lets the caller give up on cancel or deadline.
            try:
                client = httpclient.InferenceServerClient(
                    self.url,
                    connection_timeout=HTTP_CONNECT_TIMEOUT_S,
                    network_timeout=timeout_s if timeout_s is not None else HTTP_NO_TIMEOUT_S,
                )
                try:
                    outcome["result"] = client.infer(self.model, inputs, outputs=outputs, request_id=request_id)
                    outcome["finished_at_s"] = time.perf_counter()
                finally:
                    client.close()
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc
            finally:
                finished.set()

        started_s = time.perf_counter()
        # daemon: an abandoned call must not keep the process alive.
        threading.Thread(target=call, name="synerdiff-http", daemon=True).start()
        while not finished.wait(POLL_INTERVAL_S):
            if cancel is not None and cancel.is_set():
                # HTTP cannot cancel a request in flight: stop it by its id, then take its answer.
                try:
                    self.stop(request_id)
                except GenerationError:
                    pass  # best effort: the request may have finished meanwhile
                finished.wait(CANCEL_GRACE_S)
                raise GenerationError("CANCELLED", "cancelled by the client")
            if _past_deadline(started_s, timeout_s):
                raise GenerationError("DEADLINE_EXCEEDED", f"no response within {timeout_s} s")
        error = outcome.get("error")
        if isinstance(error, BaseException):
            mapped = _error_from_transport(error, self.url)
            if mapped is None:
                raise error
            raise mapped from None
        result = outcome["result"]
        assert isinstance(result, httpclient.InferResult)
        decoded = decode_result(result, final=True)
        if decoded.image is None or decoded.step is None or decoded.seed is None:
            raise GenerationError("INTERNAL", "the response came without an image")
        finished_at_s = outcome["finished_at_s"]
        assert isinstance(finished_at_s, float)
        return GeneratedImage(decoded.image, decoded.seed, decoded.step, finished_at_s - started_s)


    def stop(self, request_id: str) -> int:
        """Stop every live request the server knows by `request_id` (the id its client gave it);
        returns how many were stopped. Works over HTTP and gRPC (the `stop` model)."""
        module = grpcclient if self.protocol == "grpc" else httpclient
        infer_input = module.InferInput(STOP_INPUT, [1], "BYTES")
        infer_input.set_data_from_numpy(np.array([request_id.encode("utf-8")], dtype=np.object_))
        try:
            client = module.InferenceServerClient(self.url)
            try:
                result = client.infer(STOP_MODEL, [infer_input])
            finally:
                client.close()
        except Exception as exc:
            mapped = _error_from_transport(exc, self.url)
            if mapped is None:
                raise
            raise mapped from None
        stopped = result.as_numpy(STOP_OUTPUT)
        if stopped is None:
            raise GenerationError("INTERNAL", "the stop response came without STOPPED")
        return int(stopped.reshape(-1)[0])


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a uint8 [H, W, 3] image as PNG; the file appears complete or not at all."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    path = Path(path)
    partial_path = path.with_name(path.name + ".partial")
    Image.fromarray(np.ascontiguousarray(image)).save(partial_path, format="PNG")
    partial_path.replace(path)
