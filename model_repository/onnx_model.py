"""A Python-backend model that runs one ONNX graph with ONNX Runtime on CPU (target `cpu`).

Config parameters: `onnx_file` (absolute path), `bindings` ("TRITON_INPUT:onnx_input,...;TRITON_OUTPUT:onnx_output,..."),
`intra_op_threads`. Sessions are made quiet for a shared 2-core host: no spinning (spinning threads of two
sessions fight over the cores, feasibility_cpu.md §5), no memory pattern (it grows with every new shape).
Each request is one ORT call; ORT on CPU is batch-invariant, which the engine's determinism relies on.
"""

from __future__ import annotations

from typing import Any, Mapping

from model_repository import triton_edge
from scheduler_backend.errors import ExecutionFailed, InvalidArgument


def parse_bindings(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """"A:a,B:b;Y:y" -> ({"A": "a", "B": "b"}, {"Y": "y"}): Triton name -> ONNX name, inputs; outputs."""
    inputs_text, outputs_text = text.split(";")
    def pairs(part: str) -> dict[str, str]:
        return dict(item.split(":") for item in part.split(",") if item)
    return pairs(inputs_text), pairs(outputs_text)


class OnnxModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        import onnxruntime as ort

        parameters = triton_edge.config_parameters(args)
        self._inputs, self._outputs = parse_bindings(parameters["bindings"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "2"))
        options.inter_op_num_threads = 1
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(parameters["onnx_file"], sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._name = args["model_name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        replies = []
        for request in requests:
            arrays = triton_edge.input_arrays(request, list(self._inputs))
            missing = [name for name, array in arrays.items() if array is None]
            if missing:
                replies.append(triton_edge.error_response(InvalidArgument(missing[0], "is required")))
                continue
            try:
                results = self._session.run(list(self._outputs.values()),
                                            {self._inputs[name]: array for name, array in arrays.items()})
            except Exception as error:  # ORT's message names the input and the shape problem
                triton_edge.log_error(f"{self._name}: {error}")
                replies.append(triton_edge.error_response(ExecutionFailed(f"{self._name}: inference failed")))
                continue
            replies.append(triton_edge.response(dict(zip(self._outputs, results))))
        return replies
