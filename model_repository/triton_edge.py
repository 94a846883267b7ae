"""The Triton edge: the only module that touches `triton_python_backend_utils`.

Everything a `model.py` needs from Triton goes through here: reading inputs, building responses,
mapping the core's errors to Triton error codes, BLS calls, config parameters, metrics and logs.
`triton_python_backend_utils` exists only inside the Python-backend stub, so it is imported lazily;
this module can be imported (not used) anywhere.

Error mapping (the only one in the project):
    InvalidArgument -> INVALID_ARG, Overloaded -> UNAVAILABLE, Cancelled -> CANCELLED,
    ExecutionFailed and anything unexpected -> INTERNAL (unexpected ones with a generic message:
    a client never sees a traceback or a path).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from scheduler_backend.errors import Cancelled, ExecutionFailed, InvalidArgument, Overloaded, SynerDiffError


def pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only inside the stub

    return pb_utils


def final_flag() -> int:
    return pb().TRITONSERVER_RESPONSE_COMPLETE_FINAL


def config_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The `parameters` of a model's config.pbtxt, as plain strings."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def input_arrays(request: Any, names: Sequence[str],
                 adopt: Callable[[Any], Any] | None = None) -> dict[str, Any | None]:
    """The named inputs of a request as numpy arrays, or as `adopt` makes them of the Triton tensors (through DLPack,
    wherever they lie); None for an input the client did not send."""
    arrays: dict[str, Any | None] = {}
    for name in names:
        tensor = pb().get_input_tensor_by_name(request, name)
        arrays[name] = None if tensor is None else tensor.as_numpy() if adopt is None else adopt(tensor)
    return arrays


def request_parameters(request: Any) -> dict[str, object]:
    """The request's `parameters` map (Triton passes it to the stub as JSON)."""
    try:
        parameters = json.loads(request.parameters() or "{}")
    except (TypeError, ValueError):
        raise InvalidArgument("parameters", "must be a map of names to values") from None
    if not isinstance(parameters, dict):
        raise InvalidArgument("parameters", "must be a map of names to values")
    return parameters


def request_id(request: Any) -> str:
    """The id the client gave the request ("" when none)."""
    return request.request_id() or ""


TensorValue = Any  # an np.ndarray, or any C-contiguous tensor with `__dlpack__` (torch, on the host or a GPU)


def _triton_tensor(name: str, value: TensorValue) -> Any:
    """A Triton tensor (BLS input, response output). A DLPack tensor is handed over without a copy in this process;
    giving `from_dlpack` the tensor itself (not a capsule) makes the stub synchronise with the stream that produced
    it before Triton reads it."""
    utils = pb()
    if isinstance(value, np.ndarray):
        return utils.Tensor(name, np.ascontiguousarray(value))
    return utils.Tensor.from_dlpack(name, value)


def response(outputs: Mapping[str, Any]) -> Any:
    """A response of numpy arrays or DLPack tensors (`_triton_tensor`)."""
    return pb().InferenceResponse([_triton_tensor(name, value) for name, value in outputs.items()])


def error_response(error: BaseException) -> Any:
    utils = pb()
    code, message = _triton_code(error)
    return utils.InferenceResponse(error=utils.TritonError(message, getattr(utils.TritonError, code)))


def _triton_code(error: BaseException) -> tuple[str, str]:
    if isinstance(error, InvalidArgument):
        return "INVALID_ARG", error.message
    if isinstance(error, Overloaded):
        return "UNAVAILABLE", error.message
    if isinstance(error, Cancelled):
        return "CANCELLED", error.message
    if isinstance(error, SynerDiffError):
        return "INTERNAL", error.message
    return "INTERNAL", "internal error; see the server log"


def send_final(sender: Any, outcome: Mapping[str, np.ndarray] | BaseException) -> None:
    """Send the one final response of a request (outputs, or an error)."""
    message = error_response(outcome) if isinstance(outcome, BaseException) else response(outcome)
    sender.send(message, flags=final_flag())


@dataclass(frozen=True)
class OutputMemory:
    """Where a BLS call asks Triton to put its outputs, and how it reads them.

    The default: host memory, read as numpy (a GPU model's outputs are then copied to the host by Triton; a CPU
    model's are there already). With `adopt` (a Triton tensor -> the caller's array, through DLPack) the outputs
    stay where `gpu` says (a GPU index, or None for the host) and are never turned into numpy.
    """

    gpu: int | None = None
    adopt: Callable[[Any], Any] | None = None


HOST_NUMPY = OutputMemory()


def _bls_request(model: str, inputs: Mapping[str, TensorValue], outputs: Sequence[str], request_id: str = "",
                 parameters: Mapping[str, object] | None = None, memory: OutputMemory = HOST_NUMPY) -> Any:
    utils = pb()
    preferred = (utils.PreferredMemory(utils.TRITONSERVER_MEMORY_CPU, 0) if memory.gpu is None
                 else utils.PreferredMemory(utils.TRITONSERVER_MEMORY_GPU, memory.gpu))
    return utils.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                  inputs=[_triton_tensor(name, value) for name, value in inputs.items()],
                                  request_id=request_id, parameters=dict(parameters or {}),
                                  preferred_memory=preferred)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/'\"():,]+){2,}/?")
_MAX_MESSAGE_CHARS = 300


def client_message(text: str) -> str:
    """A message from another model made fit for a client: its first line, no file paths (the Python
    backend appends a traceback with file names to a model's exception), bounded in length."""
    first_line = text.strip().split("\n", 1)[0]
    cleaned = _PATH.sub("<path>", first_line)
    return cleaned if len(cleaned) <= _MAX_MESSAGE_CHARS else cleaned[:_MAX_MESSAGE_CHARS] + "..."


def _bls_failure(model: str, error: Any) -> SynerDiffError:
    """A BLS error as the core's error. Responses of a decoupled model arrive through BLS as INTERNAL
    whatever their code (2.51), so an overload is also recognised by its message."""
    code, message = error.code(), client_message(error.message())
    if model != "diffusion":  # an internal model's own words go to the log, whole
        log_error(f"{model} failed: {error.message()}")
    codes = pb().TritonError
    if code == codes.INVALID_ARG:
        return ExecutionFailed(f"{model} rejected an internal request: {message}")
    if code == codes.CANCELLED or message.startswith(Cancelled.PREFIX):
        return Cancelled(message)
    if code == codes.UNAVAILABLE or Overloaded.RETRY_HINT in message or "not ready" in message:
        return Overloaded(message if Overloaded.RETRY_HINT in message else "the server is shutting down")
    return ExecutionFailed(message if model == "diffusion" else f"{model} failed: {message}")


def _reply_tensors(model: str, reply: Any, outputs: Sequence[str]) -> list[Any]:
    """The named output tensors of a BLS reply, as Triton gave them; its error, or a missing output, raised as a
    `SynerDiffError`."""
    if reply.has_error():
        raise _bls_failure(model, reply.error())
    found = []
    for name in outputs:
        tensor = pb().get_output_tensor_by_name(reply, name)
        if tensor is None:
            raise ExecutionFailed(f"{model} returned no {name}")
        found.append(tensor)
    return found


def _outputs(model: str, reply: Any, outputs: Sequence[str], memory: OutputMemory) -> dict[str, Any]:
    read = memory.adopt or (lambda tensor: tensor.as_numpy())
    return {name: read(tensor) for name, tensor in zip(outputs, _reply_tensors(model, reply, outputs))}


async def bls_infer(model: str, inputs: Mapping[str, TensorValue], outputs: Sequence[str],
                    memory: OutputMemory = HOST_NUMPY) -> dict[str, Any]:
    """One BLS call, awaited on the caller's event loop; its outputs as `memory` says (numpy by default). Raises a
    `SynerDiffError` on failure."""
    reply = await _bls_request(model, inputs, outputs, memory=memory).async_exec()
    return _outputs(model, reply, outputs, memory)


def bls_stream_final(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], request_id: str = "",
                     parameters: Mapping[str, object] | None = None) -> dict[str, np.ndarray]:
    """Call a decoupled model; return the outputs of its last data response, or raise its error as a
    `SynerDiffError`. Blocking: call it from a thread (`answer_from_thread`)."""
    last: dict[str, np.ndarray] | None = None
    for reply in _bls_request(model, inputs, outputs, request_id, parameters).exec(decoupled=True):
        if reply.has_error():
            raise _bls_failure(model, reply.error())
        present = {name: tensor.as_numpy() for name in outputs
                   if (tensor := pb().get_output_tensor_by_name(reply, name)) is not None}
        if present:
            last = present
    if last is None:
        raise ExecutionFailed(f"{model} sent no final response")
    return last


def answer_from_thread(sender: Any, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str],
                       request_id: str = "", parameters: Mapping[str, object] | None = None) -> None:
    """Forward a request to the decoupled `model` on a thread of its own and send its outcome through `sender`
    as the request's one final response, so `execute` returns at once and the stub stays responsive to
    Triton's health checks however long `model` takes. `inputs` must not be Triton's own buffers (they are
    freed when `execute` returns)."""
    def forward() -> None:
        outcome: dict[str, np.ndarray] | SynerDiffError
        try:
            outcome = bls_stream_final(model, inputs, outputs, request_id, parameters)
        except SynerDiffError as error:
            outcome = error
        except Exception as error:
            log_error(f"forwarding to {model} failed: {error!r}")
            outcome = ExecutionFailed("internal error while forwarding the request")
        send_final(sender, outcome)

    threading.Thread(target=forward, daemon=True).start()


def input_tensors(request: Any, names: Sequence[str]) -> dict[str, Any | None]:
    """The named inputs of a request as Triton tensors, wherever they lie (host or device); None if absent."""
    return {name: pb().get_input_tensor_by_name(request, name) for name in names}


def bls_forward(model: str, tensors: Sequence[Any], outputs: Sequence[str]) -> list[Any]:
    """Call `model` with Triton tensors as they are and return its output tensors as they come: nothing is copied
    in this process and no memory is preferred, so device tensors stay on the device. Blocking; raises a
    `SynerDiffError` on failure."""
    reply = pb().InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                  inputs=list(tensors)).exec()
    return _reply_tensors(model, reply, outputs)


def tensor_response(tensors: Sequence[Any]) -> Any:
    """A response made of Triton tensors as they are (see `bls_forward`)."""
    return pb().InferenceResponse(list(tensors))


def log_info(message: str) -> None:
    pb().Logger.log_info(message)


def log_error(message: str) -> None:
    pb().Logger.log_error(message)


class MetricFactory:
    """Creates Prometheus metrics on Triton's /metrics endpoint, all labelled with the model name.

    The families are kept referenced here: a family object that is garbage-collected disappears.
    """

    def __init__(self, model_name: str) -> None:
        self._labels = {"model": model_name}
        self._families: list[Any] = []

    def _family(self, name: str, description: str, kind: str) -> Any:
        utils = pb()
        family = utils.MetricFamily(name=name, description=description, kind=getattr(utils.MetricFamily, kind))
        self._families.append(family)
        return family

    def close(self) -> None:
        """Drop the families (after the metrics made from them)."""
        self._families.clear()

    def gauge(self, name: str, description: str) -> Any:
        return self._family(name, description, "GAUGE").Metric(labels=self._labels)

    def counter(self, name: str, description: str) -> Any:
        return self._family(name, description, "COUNTER").Metric(labels=self._labels)

    def counters(self, name: str, description: str, label: str, values: Sequence[str]) -> dict[str, Any]:
        family = self._family(name, description, "COUNTER")
        return {value: family.Metric(labels={**self._labels, label: value}) for value in values}

    def histogram(self, name: str, description: str, buckets: Sequence[float]) -> Any:
        return self._family(name, description, "HISTOGRAM").Metric(labels=self._labels, buckets=list(buckets))


def iter_requests(requests: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """(request, response sender) pairs."""
    for request in requests:
        yield request, request.get_response_sender()
