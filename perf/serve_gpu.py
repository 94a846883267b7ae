"""`python -m perf.serve_gpu`: serve on an NVIDIA GPU inside the NGC Triton 24.10 container (deploy/Dockerfile).

Steps, each skipped when its result is already there: export the preset or checkpoint (ONNX graphs and torch
modules), build the TensorRT engines for this GPU and bound (target `gpu`; only when `tensorrt` is importable,
else the torch fallback `gpu-torch` is served), render the repository, then exec the container's tritonserver with
the memory pools sized for the export (export/gpu_memory.py), supervised as on CPU (perf/server.py: the watchdog
restarts the server when a stub dies; SIGTERM stops it cleanly). `--prepare-only` stops before serving (a build step,
a Kubernetes init container).

Defaults for a GPU differ from the CPU launcher (perf/serve.py) in one place: the loop keeps its tensors on the GPU
(`--loop-tensors torch:cuda`: DLPack across BLS calls), so the exact `stages` chunks hand the decoder's activations
from engine to engine without leaving the device. With `--loop-tensors numpy` the default chunking becomes
`tiles:2x2:4`: stage activations would cross the host (384 MiB per 512 x 512 image for SD-1.5's stage 3;
docs/design.md §6), tiles carry only latents and image tiles. Serving keeps the CPU launcher's hygiene: model
control `none`, the admin APIs behind the admin key (perf/server.py), and 127.0.0.1 unless `--address` says
otherwise (the container's command does, see deploy/Dockerfile). Not run in this repository's CI: there is no GPU or container here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from export.gpu_memory import MemoryPools, memory_pools
from export.render import ServingSettings, render_repository
from export.tensorrt_build import TensorRTUnavailable, build_engines, import_tensorrt, read_engines
from model_repository.bls_executor import loop_on_gpu
from perf.serve import serving_profile
from perf.server import Ports, TritonServer, serve_in_foreground
from scheduler_backend.policies import POLICIES, needs_profile

ROOT = Path(__file__).resolve().parents[1]
TRITONSERVER = "/opt/tritonserver/bin/tritonserver"  # in the NGC container
GPU_LOOP_TENSORS = "torch:cuda"


def default_vae_chunking(loop_tensors: str) -> str:
    """Exact stages where the activations stay on the GPU; tiles where the loop would carry them through the host."""
    return "stages" if loop_on_gpu(loop_tensors) else "tiles:2x2:4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="sd15", help="model preset to export and serve (default sd15)")
    parser.add_argument("--checkpoint", type=Path, help="serve a local diffusers checkpoint instead of a preset")
    parser.add_argument("--target", choices=("auto", "gpu", "gpu-torch"), default="auto",
                        help="gpu: TensorRT engines; gpu-torch: the torch fallback; auto: gpu if tensorrt imports")
    parser.add_argument("--policy", choices=POLICIES, default=ServingSettings.policy)
    parser.add_argument("--profile", type=Path,
                        help="latency profile of these models on this GPU (the synerdiff policies need one; for "
                             "gpu-torch it is measured when missing; perf/profiles/h100-sd15-estimated.json is an "
                             "estimate for SD-1.5 on an H100)")
    parser.add_argument("--max-waiting-requests", type=int, default=ServingSettings.max_waiting_requests)
    parser.add_argument("--max-running-requests", type=int, default=ServingSettings.max_running_requests)
    parser.add_argument("--loop-tensors", default=GPU_LOOP_TENSORS,
                        help="where the diffusion loop keeps its tensors: torch:cuda (default) or numpy (host)")
    parser.add_argument("--vae-chunking", help="whole | stages | tiles[:RxC:overlap] (default: stages with the loop "
                                               "on the GPU, tiles:2x2:4 with it on the host)")
    parser.add_argument("--vae-fp32", action="store_true", help="build the VAE engines in fp32")
    parser.add_argument("--address", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")
    parser.add_argument("--prepare-only", action="store_true", help="export, build and render, then exit")


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def engines_usable(model_dir: Path, max_running_requests: int, tensorrt_version: str, device: str) -> bool:
    """True if the engines in `model_dir` were built by this TensorRT, for this GPU, covering this bound."""
    engines = read_engines(model_dir)
    return (engines is not None and engines.get("tensorrt_version") == tensorrt_version
            and engines.get("device") == device and int(engines["max_running_requests"]) >= max_running_requests)


def choose_target(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return "gpu-torch"
    return "gpu"


def gpu_profile(model_dir: Path, target: str, settings: ServingSettings) -> Path:
    """The latency profile of the torch models on this GPU, measured if missing (perf/profile.py, runtime
    torch:cuda); TensorRT engines cannot be profiled in-process, so target `gpu` needs --profile."""
    if target != "gpu-torch":
        raise SystemExit(f"policy {settings.policy!r} needs --profile (a latency profile of the TensorRT engines on "
                         f"this GPU) with target {target}, or choose --policy continuous")
    return serving_profile(model_dir, settings, runtime="torch:cuda")


def prepare(args: argparse.Namespace) -> tuple[Path, MemoryPools]:
    """Export, build, render; returns the repository and the memory pools to serve it with."""
    from export.exporter import export_models

    name = args.checkpoint.name if args.checkpoint else args.preset
    model_dir = export_models(args.checkpoint or args.preset, args.build_dir / "models" / name, seed=0)
    target = choose_target(args.target)
    if target == "gpu":
        trt, device = import_tensorrt(), _device_name()
        if not engines_usable(model_dir, args.max_running_requests, str(trt.__version__), device):
            build_engines(model_dir, args.max_running_requests, vae_fp16=not args.vae_fp32, trt=trt,
                          device_name=device)
    chunking = args.vae_chunking or default_vae_chunking(args.loop_tensors)
    settings = ServingSettings(policy=args.policy, max_waiting_requests=args.max_waiting_requests,
                               max_running_requests=args.max_running_requests, vae_chunking=chunking,
                               loop_tensors=args.loop_tensors)
    if args.profile is not None:
        settings = replace(settings, profile=str(args.profile.resolve()))
    elif needs_profile(args.policy):
        settings = replace(settings, profile=str(gpu_profile(model_dir, target, settings)))
    repository = render_repository(model_dir, args.build_dir / "repository" / f"{name}-{target}", target, settings)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    print(f"rendered {target} repository at {repository}", flush=True)
    return repository, memory_pools(manifest, args.max_running_requests, chunking,
                                    loop_on_gpu=loop_on_gpu(args.loop_tensors))


def gpu_server(repository: Path, pools: MemoryPools, address: str, ports: Ports) -> TritonServer:
    """The container's tritonserver on a GPU repository, under the same supervisor and flags as on CPU, plus the
    memory pools and GPU metrics; its log goes to stdout."""
    return TritonServer(repository, ports, log_path=None, address=address, tritonserver=TRITONSERVER,
                        gpu_metrics=True, extra_flags=pools.server_flags())


def run(args: argparse.Namespace) -> int:
    repository, pools = prepare(args)
    if args.prepare_only:
        return 0
    return serve_in_foreground(gpu_server(repository, pools, args.address,
                                          Ports(args.http_port, args.grpc_port, args.metrics_port)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.serve_gpu", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
