"""The targets a measuring command (`bench compare`, `overhead`) can serve on this machine, and how.

* `cpu`: ONNX Runtime on the CPU (the default; what CI runs);
* `cpu-torch`: the torch models on the CPU, the loop's tensors in torch (the GPU route, testable without a GPU);
* `gpu-torch`: the torch models on the GPU in fp16, the loop's tensors on the GPU; the server gets the CUDA memory
  pools the export needs (export/gpu_memory.py) and GPU metrics.

Each target's models are profiled under the runtime they run with (perf/runtimes.py). Target `gpu` (TensorRT) is
not among them: its engines cannot be profiled in-process here, and TensorRT does not run on this machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.gpu_memory import memory_pools
from export.render import ServingSettings
from export.targets import TARGET_SPECS
from model_repository.bls_executor import loop_on_gpu
from perf.server import Ports, TritonServer, free_ports

MEASURED_TARGETS = ("cpu", "cpu-torch", "gpu-torch")
RUNTIME_OF_TARGET = {"cpu": "onnx", "cpu-torch": "torch:cpu", "gpu-torch": "torch:cuda"}


def runtime_of(target: str) -> str:
    """The runtime the target's unet and VAE models run under, for the profiler."""
    return RUNTIME_OF_TARGET[target]


def server_flags(target: str, manifest: dict[str, Any], settings: ServingSettings) -> tuple[str, ...]:
    """Extra tritonserver flags for serving `target`: the CUDA memory pools on a GPU, none on the CPU."""
    if TARGET_SPECS[target].torch_device != "cuda":
        return ()
    loop_tensors = settings.loop_tensors or TARGET_SPECS[target].loop_tensors
    pools = memory_pools(manifest, settings.max_running_requests, settings.vae_chunking,
                         loop_on_gpu=loop_on_gpu(loop_tensors))
    return pools.server_flags()


def fresh_server(repository: Path, target: str, model_dir: Path, settings: ServingSettings,
                 log_path: Path) -> TritonServer:
    """A tritonserver for a rendered `target` repository on free loopback ports (not started)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return TritonServer(repository, Ports(*free_ports(3)), log_path,
                        gpu_metrics=TARGET_SPECS[target].torch_device == "cuda",
                        extra_flags=server_flags(target, manifest, settings))
