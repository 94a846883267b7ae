"""A Python-backend model that runs one ONNX graph with ONNX Runtime on CPU (target `cpu`), and the ORT pieces
every such model shares.

Config parameters: `onnx_file` (absolute path), `bindings` ("TRITON_INPUT:onnx_input,...;TRITON_OUTPUT:onnx_output,..."),
`intra_op_threads`. Sessions are made quiet for a shared 2-core host: no spinning (spinning threads of two
sessions fight over the cores, feasibility_cpu.md §5), no memory pattern (it grows with every new shape).
Each request is one ORT call; ORT on CPU is batch-invariant, which the engine's determinism relies on.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from model_repository import triton_edge
from scheduler_backend.errors import ExecutionFailed, InvalidArgument, SynerDiffError


def parse_bindings(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """"A:a,B:b;Y:y" -> ({"A": "a", "B": "b"}, {"Y": "y"}): Triton name -> ONNX name, inputs; outputs."""
    inputs_text, outputs_text = text.split(";")
    def pairs(part: str) -> dict[str, str]:
        return dict(item.split(":") for item in part.split(",") if item)
    return pairs(inputs_text), pairs(outputs_text)


def quiet_session(onnx_file: str, intra_op_threads: int) -> Any:
    """A CPU ONNX Runtime session over ``onnx_file`` with the quiet options of the module docstring."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_file, sess_options=options, providers=["CPUExecutionProvider"])


def intra_op_threads(parameters: Mapping[str, str]) -> int:
    return int(parameters.get("intra_op_threads", "2"))


def required_inputs(request: Any, names: Sequence[str], max_elements: int | None = None,
                    adopt: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """The named inputs of a request (numpy, or what `adopt` makes of them: `triton_edge.input_arrays`);
    InvalidArgument naming the first one the client did not send, or the largest one when together they hold more
    than `max_elements` values (the `max_input_elements` parameter: the most the engine ever sends in one call,
    `Limits.internal_call_elements`)."""
    present: dict[str, Any] = {}
    for name, array in triton_edge.input_arrays(request, names, adopt).items():
        if array is None:
            raise InvalidArgument(name, "is required")
        present[name] = array
    sizes = {name: math.prod(array.shape) for name, array in present.items()}
    total = sum(sizes.values())
    if max_elements is not None and total > max_elements:
        largest = max(sizes, key=lambda name: sizes[name])
        raise InvalidArgument(largest, f"too large: the inputs hold {total} values, at most {max_elements} per call")
    return present


def max_input_elements(parameters: Mapping[str, str]) -> int | None:
    value = parameters.get("max_input_elements")
    return int(value) if value else None


def run_session(model_name: str, session: Any, outputs: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[Any]:
    """One ORT call; a failure is logged (ORT's message names the input and the shape problem) and raised as
    ExecutionFailed with a message fit for clients."""
    try:
        return session.run(list(outputs), dict(feeds))
    except Exception as error:
        triton_edge.log_error(f"{model_name}: {error}")
        raise ExecutionFailed(f"{model_name}: inference failed") from None


def reply_each(requests: Sequence[Any], infer: Callable[[Any], Mapping[str, Any]]) -> list[Any]:
    """One response per request, in order: ``infer``'s outputs, or the SynerDiffError it raised."""
    replies = []
    for request in requests:
        try:
            replies.append(triton_edge.response(infer(request)))
        except SynerDiffError as error:
            replies.append(triton_edge.error_response(error))
    return replies


class OnnxModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        parameters = triton_edge.config_parameters(args)
        self._inputs, self._outputs = parse_bindings(parameters["bindings"])
        self._session = quiet_session(parameters["onnx_file"], intra_op_threads(parameters))
        self._name = args["model_name"]
        self._max_elements = max_input_elements(parameters)

    def execute(self, requests: list[Any]) -> list[Any]:
        return reply_each(requests, self._infer)

    def _infer(self, request: Any) -> dict[str, np.ndarray]:
        arrays = required_inputs(request, list(self._inputs), self._max_elements)
        results = run_session(self._name, self._session, list(self._outputs.values()),
                              {self._inputs[name]: array for name, array in arrays.items()})
        return dict(zip(self._outputs, results))
