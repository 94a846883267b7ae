"""How the profiler and the overhead probe run an export's models: as the server's models of a target run them.

A runtime is named like the `loop_tensors` values it goes with:
* `onnx`: ONNX Runtime on the CPU, in sessions made as the `cpu` target's models make them
  (model_repository.onnx_model.quiet_session);
* `torch:cpu`, `torch:cuda[:N]`: the export's torch modules through model_repository.torch_runner.GraphRunner,
  as the `cpu-torch` / `gpu-torch` models run them (fp32 on the CPU; fp16 on a GPU, the UNet with CUDA graphs).

`runners(runtime, model_dir, manifest, graph, threads)` gives one `Runner` per module of a graph ("unet",
"vae_decoder", or one per VAE stage for "vae_stages"). A runner binds host inputs once (`bind`: on a GPU they are
copied there once, as the GPU loop keeps them) into a call whose duration is the model's: on CUDA it waits for the
device. Not modelled: TensorRT (target `gpu`), which cannot run here.

Where the server and one profiling process differ: torch's CPU thread count is per process (the server gives each
model its own), so under `torch:cpu` the count of the runners made last applies to every call; CUDA calls from two
profiling threads share the device's default stream (time-sliced, as two server processes without MPS are).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from model_repository.bls_executor import torch_loop_device

Call = Callable[[], Any]  # one model call with fixed inputs


class Runner(Protocol):
    def bind(self, inputs: Sequence[np.ndarray]) -> Call:
        """A call of the model on `inputs` (in the graph's input order); it returns once the result is ready."""
        ...

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """The model's (first) output for `inputs`, on the host."""
        ...


def torch_device(runtime: str) -> str | None:
    """"torch:cuda:1" -> "cuda:1"; None for onnx; ValueError naming the choices for anything else. A torch runtime
    names its device as a `loop_tensors` value does (model_repository.bls_executor.torch_loop_device)."""
    if runtime == "onnx":
        return None
    try:
        device = torch_loop_device(runtime)
    except ValueError:
        device = None
    if device is None:
        raise ValueError(f"runtime must be onnx, torch:cpu or torch:cuda[:N], got {runtime!r}")
    return device


def parse_runtime(text: str) -> str:
    """The runtime `text` names, written canonically; ValueError naming the choices."""
    device = torch_device(text)
    return "onnx" if device is None else f"torch:{device}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def runtime_facts(runtime: str) -> dict[str, Any]:
    """What a measurement under `runtime` depends on besides the model and the thread counts. For onnx these are
    the facts profiles were always keyed by, so existing profiles keep their keys."""
    facts: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count()}
    device = torch_device(runtime)
    if device is None:
        import onnxruntime as ort

        return {**facts, "onnxruntime": ort.__version__}
    import torch

    accelerator = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    return {**facts, "runtime": runtime, "torch": torch.__version__, "device": accelerator}


# -- ONNX Runtime ------------------------------------------------------------------------------------------


class OnnxRunner:
    def __init__(self, session: Any) -> None:
        self._session = session
        self._names = [node.name for node in session.get_inputs()]

    def _feeds(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, inputs, strict=True))

    def bind(self, inputs: Sequence[np.ndarray]) -> Call:
        feeds = self._feeds(inputs)
        return lambda: self._session.run(None, feeds)

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._session.run(None, self._feeds(inputs))[0]


def _onnx_runners(model_dir: Path, manifest: Mapping[str, Any], graph: str, threads: int) -> list[Runner]:
    from model_repository.onnx_model import quiet_session

    files = manifest["vae_stages"]["files"] if graph == "vae_stages" else [manifest["files"][graph]]
    return [OnnxRunner(quiet_session(str(model_dir / file), threads)) for file in files]


# -- torch ---------------------------------------------------------------------------------------------------


class TorchRunner:
    def __init__(self, runner: Any, device: Any) -> None:
        self._runner, self._device = runner, device

    def bind(self, inputs: Sequence[np.ndarray]) -> Call:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(array)).to(self._device) for array in inputs]
        synchronize = (lambda: torch.cuda.synchronize(self._device)) if self._device.type == "cuda" else (lambda: None)

        def call() -> None:
            self._runner.run(tensors)
            synchronize()
        return call

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._runner(inputs)


def _torch_runners(model_dir: Path, graph: str, threads: int, device_name: str) -> list[Runner]:
    import torch

    from export.targets import UNET_CUDA_GRAPHS
    from model_repository.torch_runner import GraphRunner, load_graph, serving_dtype

    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    graphs = UNET_CUDA_GRAPHS if graph == "unet" else 0  # as the gpu-torch configs capture them
    loaded = load_graph(model_dir, graph, serving_dtype(device))
    modules = loaded if isinstance(loaded, list) else [loaded]
    return [TorchRunner(GraphRunner(module, device, graphs), device) for module in modules]


def runners(runtime: str, model_dir: Path, manifest: Mapping[str, Any], graph: str, threads: int) -> list[Runner]:
    """One runner per module of `graph` ("unet", "vae_decoder", "vae_stages") of the export in `model_dir`."""
    device = torch_device(runtime)
    if device is None:
        return _onnx_runners(model_dir, manifest, graph, threads)
    return _torch_runners(model_dir, graph, threads, device)


def runner(runtime: str, model_dir: Path, manifest: Mapping[str, Any], graph: str, threads: int) -> Runner:
    (only,) = runners(runtime, model_dir, manifest, graph, threads)
    return only
