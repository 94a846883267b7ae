"""The torch side of the torch serving fallback (no Triton here): load an export's diffusers/transformers modules
and run them on numpy inputs, in float16 with optional CUDA graphs on a GPU, in float32 on the CPU.

`load_graph(model_dir, graph, dtype)` returns the module behind one exported graph (export/graphs.py, the modules
the ONNX graphs were traced from) or the list of VAE stages (export/vae_stages.py), from the `torch/` directory
the exporter writes (export/layout.py TORCH_MODULE_DIRS). `GraphRunner` runs one such module on tensors wherever
they lie (`run`: moved to its device, floating ones cast to its dtype; the output a fresh float32 tensor on its device)
or on numpy arrays (`__call__`: the output as float32 numpy).

CUDA graphs (`max_cuda_graphs` > 0, CUDA only): the first call at a new set of input shapes runs eagerly (it warms
up the kernels) and captures a graph for those shapes into one memory pool shared by all of this runner's graphs;
later calls at those shapes copy their inputs into the graph's static inputs and replay it. Sharing the pool is
safe because a runner's graphs never run concurrently (one Triton model instance executes one request at a time)
and each output is copied out of the graph's memory (the float32 cast of the fp16 output) before the next replay.
At most `max_cuda_graphs` shapes are captured; other shapes run eagerly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

GRAPHS = ("unet", "vae_decoder", "text_encoder", "vae_stages")


def load_graph(model_dir: Path, graph: str, dtype: torch.dtype) -> nn.Module | list[nn.Module]:
    """The module of `graph` (one of GRAPHS) from `<model_dir>/torch/`, in eval mode and `dtype`; for
    "vae_stages" the list of stage modules."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from export.graphs import TextEncoderGraph, UNetGraph, VAEDecoderGraph
    from export.layout import TORCH_MODULE_DIRS
    from export.vae_stages import build_vae_stages

    def directory(name: str) -> str:
        return str(Path(model_dir) / TORCH_MODULE_DIRS[name])

    # low_cpu_mem_usage=False: the default needs `accelerate` (not a dependency); torch_dtype: diffusers keeps the
    # modules a model marks as float32-only in float32.
    if graph == "unet":
        module: nn.Module = UNetGraph(UNet2DConditionModel.from_pretrained(
            directory("unet"), torch_dtype=dtype, low_cpu_mem_usage=False))
    elif graph in ("vae_decoder", "vae_stages"):
        vae = AutoencoderKL.from_pretrained(directory("vae"), torch_dtype=dtype, low_cpu_mem_usage=False).eval()
        if graph == "vae_stages":
            return [stage.requires_grad_(False) for stage in build_vae_stages(vae)]
        module = VAEDecoderGraph(vae)
    elif graph == "text_encoder":
        module = TextEncoderGraph(CLIPTextModel.from_pretrained(directory("text_encoder")))
    else:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    return module.to(dtype).eval().requires_grad_(False)  # a no-op cast for the diffusers modules


def serving_dtype(device: torch.device) -> torch.dtype:
    """float16 on a GPU (what the fallback is for), float32 on the CPU (where it matches the ONNX graphs)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def c_order(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` if its strides are exactly C order's, else a C-order copy. Stricter than `is_contiguous()`, which
    ignores the strides of size-1 dimensions (a batch of one in channels-last order can pass it) that a DLPack
    consumer may check."""
    expected, step = [], 1
    for size in reversed(tensor.shape):
        expected.append(step)
        step *= size
    if tensor.stride() == tuple(reversed(expected)):
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


class _CapturedGraph:
    def __init__(self, module: nn.Module, inputs: Sequence[torch.Tensor], pool: Any) -> None:
        self.inputs = [tensor.clone() for tensor in inputs]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = module(*self.inputs)

    def run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for static, tensor in zip(self.inputs, inputs):
            static.copy_(tensor)
        self.graph.replay()
        return self.output


class GraphRunner:
    """Runs one module on tensors or numpy arrays (positional, in the module's argument order)."""

    def __init__(self, module: nn.Module, device: torch.device, max_cuda_graphs: int = 0) -> None:
        self._module = module.to(device)
        self._device = device
        self._dtype = next(module.parameters()).dtype
        self._max_graphs = max_cuda_graphs if device.type == "cuda" else 0
        self._graphs: dict[tuple[tuple[int, ...], ...], _CapturedGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self._max_graphs else None

    @property
    def captured_shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return list(self._graphs)

    def _input(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self._device, non_blocking=True)
        return tensor.to(self._dtype) if tensor.is_floating_point() else tensor

    def run(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The module on `tensors` (positional); a C-contiguous float32 tensor on the runner's device, in memory of its
        own (never a captured graph's output buffer, which the next replay overwrites). C order is what Triton takes
        through DLPack; torch's CPU convolutions answer a batch of more than one in channels-last order."""
        with torch.inference_mode():
            output, replayed = self._run([self._input(tensor) for tensor in tensors])
            return c_order(output.to(torch.float32, copy=replayed))

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return self.run([torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]).cpu().numpy()

    def _run(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """The output, and whether it is a captured graph's output buffer."""
        key = tuple(tuple(tensor.shape) for tensor in inputs)
        graph = self._graphs.get(key)
        if graph is not None:
            return graph.run(inputs), True
        output = self._module(*inputs)
        if len(self._graphs) < self._max_graphs:  # this eager call was the warm-up: capture right after it
            torch.cuda.synchronize(self._device)
            self._graphs[key] = _CapturedGraph(self._module, inputs, self._pool)
        return output, False
