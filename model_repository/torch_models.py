"""Python-backend models that run the export's diffusers/transformers modules with torch (targets `gpu-torch` and
`cpu-torch`): the fallback for GPUs without TensorRT, with the same Triton names, shapes and semantics as the ONNX
Runtime models of target `cpu` (docs/interfaces.md).

Config parameters: `model_dir` (the export), `graph` (unet | vae_decoder | text_encoder, see torch_runner.py),
`bindings` (as in onnx_model.py; inputs in the module's argument order), `device` ("cuda": the instance's GPU,
float16; "cpu": float32), `max_cuda_graphs` (CUDA graphs captured per model, 0 = none), `intra_op_threads` (CPU).
`vae_stages` takes `model_dir`, `device` and `max_cuda_graphs` and runs one stage per request like staged_vae.py.
Tensors are read and answered through DLPack, wherever Triton puts them (the configs set
FORCE_CPU_ONLY_INPUT_TENSORS "no"): a GPU loop's inputs (`loop_tensors` torch:cuda) reach the module without leaving
the GPU, and its outputs go back the same way; on the CPU, they are read where Triton's shared memory holds them.
Errors: a missing input or a STAGE out of range is INVALID_ARG; a failing torch call is logged and INTERNAL.
Unlike ONNX Runtime on CPU, torch does not promise that a row's result is independent of its batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from model_repository import triton_edge
from model_repository.onnx_model import (intra_op_threads, max_input_elements, parse_bindings, reply_each,
                                         required_inputs)
from model_repository.staged_vae import HIDDEN, HIDDEN_OUT, STAGE, stage_index
from scheduler_backend.errors import ExecutionFailed


def _device(parameters: Mapping[str, str], args: Mapping[str, str]) -> Any:
    import torch

    if parameters.get("device", "cuda") == "cpu":
        torch.set_num_threads(intra_op_threads(parameters))
        return torch.device("cpu")
    return torch.device("cuda", int(args.get("model_instance_device_id", "0")))


def _runners(parameters: Mapping[str, str], args: Mapping[str, str], graph: str) -> list[Any]:
    from model_repository.torch_runner import GraphRunner, load_graph, serving_dtype

    device = _device(parameters, args)
    loaded = load_graph(Path(parameters["model_dir"]), graph, serving_dtype(device))
    modules = loaded if isinstance(loaded, list) else [loaded]
    return [GraphRunner(module, device, int(parameters.get("max_cuda_graphs", "0"))) for module in modules]


def _as_torch(tensor: Any) -> Any:
    """A Triton input as a torch tensor over the same memory (valid while `execute` runs)."""
    import torch

    return torch.from_dlpack(tensor)


def _guarded(model_name: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as error:
        triton_edge.log_error(f"{model_name}: {error}")
        raise ExecutionFailed(f"{model_name}: inference failed") from None


class TorchGraphModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        parameters = triton_edge.config_parameters(args)
        self._inputs, self._outputs = parse_bindings(parameters["bindings"])
        (self._runner,) = _runners(parameters, args, parameters["graph"])
        self._name = args["model_name"]
        self._max_elements = max_input_elements(parameters)

    def execute(self, requests: list[Any]) -> list[Any]:
        return reply_each(requests, self._infer)

    def _infer(self, request: Any) -> dict[str, Any]:
        tensors = required_inputs(request, list(self._inputs), self._max_elements, _as_torch)
        output = _guarded(self._name, lambda: self._runner.run([tensors[name] for name in self._inputs]))
        return {next(iter(self._outputs)): output}


class TorchVaeStagesModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        parameters = triton_edge.config_parameters(args)
        self._runners = _runners(parameters, args, "vae_stages")
        self._name = args["model_name"]
        self._max_elements = max_input_elements(parameters)

    def execute(self, requests: list[Any]) -> list[Any]:
        return reply_each(requests, self._infer)

    def _infer(self, request: Any) -> dict[str, Any]:
        tensors = required_inputs(request, [STAGE, HIDDEN], self._max_elements, _as_torch)
        runner = self._runners[stage_index(tensors[STAGE], len(self._runners))]
        return {HIDDEN_OUT: _guarded(self._name, lambda: runner.run([tensors[HIDDEN]]))}
