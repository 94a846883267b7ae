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
from dataclasses import dataclass
from pathlib import Path

from export.gpu_memory import memory_pools
from export.render import ServingSettings
from export.targets import TARGET_SPECS
from model_repository.bls_executor import loop_on_gpu
from perf.server import Ports, TritonServer, free_ports

MEASURED_TARGETS = tuple(name for name, spec in TARGET_SPECS.items() if spec.variant != "tensorrt")


def runtime_of(target: str) -> str:
    """The runtime the target's unet and VAE models run under, for the profiler: ONNX Runtime for the default
    models, torch on the target's device for the torch ones. ValueError for TensorRT (not profiled in-process)."""
    spec = TARGET_SPECS[target]
    if spec.variant == "tensorrt":
        raise ValueError(f"target {target!r} runs TensorRT engines, which the profiler does not measure")
    return f"torch:{spec.torch_device}" if spec.variant == "torch" else "onnx"


@dataclass(frozen=True)
class ServedTarget:
    """How to start tritonserver on repositories rendered for one target from one export."""

    name: str
    server_flags: tuple[str, ...] = ()  # the CUDA memory pools on a GPU
    gpu_metrics: bool = False

    def server(self, repository: Path, log_path: Path) -> TritonServer:
        """A tritonserver for `repository` on free loopback ports (not started)."""
        return TritonServer(repository, Ports(*free_ports(3)), log_path, gpu_metrics=self.gpu_metrics,
                            extra_flags=self.server_flags)


def served_target(target: str, model_dir: Path, settings: ServingSettings) -> ServedTarget:
    """`target` served from the export in `model_dir` with `settings` (their bounds size the GPU's pools)."""
    if not TARGET_SPECS[target].on_gpu:
        return ServedTarget(target)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    loop_tensors = settings.loop_tensors or TARGET_SPECS[target].loop_tensors
    pools = memory_pools(manifest, settings.max_running_requests, settings.vae_chunking,
                         loop_on_gpu=loop_on_gpu(loop_tensors))
    return ServedTarget(target, pools.server_flags(), gpu_metrics=True)
