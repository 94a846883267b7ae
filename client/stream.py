"""The callback side of one gRPC stream carrying exactly one generation request.

Job: turn the (result, error) callbacks of tritonclient's stream thread into progress calls and one
outcome (an image or a GenerationError) that the calling thread waits for.

Invariants:
- the first terminal event wins (a final response, an error, or a failing progress callback);
  anything after it is ignored, e.g. the CANCELLED that stop_stream(cancel_requests=True) reports;
- a response is final when it carries triton_final_response=true; a server that does not send
  the flag ends the request with its image response;
- nothing raised here reaches tritonclient's stream thread: an exception there kills the thread
  silently and the caller would wait forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.contract import FINAL_FLAG_PARAMETER, DecodedResponse, decode_result
from client.errors import GenerationError, error_from_exception

ProgressCallback = Callable[[int, int | None], None]  # (steps done, total or None)


def final_flag(result: grpcclient.InferResult) -> bool | None:
    """The response's triton_final_response flag, or None when the server did not send it."""
    parameters = result.get_response().parameters
    if FINAL_FLAG_PARAMETER not in parameters:
        return None
    return bool(parameters[FINAL_FLAG_PARAMETER].bool_param)


class StreamCollector:
    """Pass an instance as the stream callback: `collector(result=..., error=...)`."""

    def __init__(self, on_progress: ProgressCallback | None, total_steps: int | None) -> None:
        self._on_progress = on_progress
        self._total_steps = total_steps
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._image: np.ndarray | None = None
        self._step = 0
        self._seed = 0
        self._error: GenerationError | None = None
        self._callback_exception: BaseException | None = None
        self.finished_at_s: float | None = None  # time.perf_counter() of the terminal event

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None) -> bool:
        return self._done.wait(timeout_s)

    def __call__(
        self, result: grpcclient.InferResult | None, error: InferenceServerException | None
    ) -> None:
        if self._done.is_set():
            return
        try:
            if error is not None:
                self._finish(error=error_from_exception(error))
            elif result is not None:
                self._on_result(result)
        except GenerationError as exc:
            self._finish(error=exc)
        except Exception as exc:  # see the module invariants
            with self._lock:
                self._callback_exception = exc
            self._finish()

    def _on_result(self, result: grpcclient.InferResult) -> None:
        flag = final_flag(result)
        decoded: DecodedResponse = decode_result(result, final=bool(flag))
        if decoded.image is not None:
            with self._lock:
                self._image = decoded.image
                self._step = decoded.step or 0
                self._seed = decoded.seed or 0
        elif decoded.step is not None and not decoded.final and self._on_progress is not None:
            self._on_progress(decoded.step, self._total_steps)
        if flag or (flag is None and decoded.image is not None):
            self._finish()

    def _finish(self, error: GenerationError | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            if error is None and self._image is None and self._callback_exception is None:
                error = GenerationError("INTERNAL", "the final response came without an image")
            self._error = error
            self.finished_at_s = time.perf_counter()
            self._done.set()

    def outcome(self) -> tuple[np.ndarray, int, int]:
        """(image, steps, seed) once done; raises the stream's error or the progress callback's
        exception. Call only after wait() returned True."""
        if not self._done.is_set():
            raise RuntimeError("outcome() before the stream finished")
        with self._lock:
            if self._callback_exception is not None:
                raise self._callback_exception
            if self._error is not None:
                raise self._error
            assert self._image is not None  # _finish guarantees an image or an error
            return self._image, self._step, self._seed
