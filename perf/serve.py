"""`synerdiff serve` / scripts/serve.sh: export a preset (if not yet exported), measure its latency profile (if not
yet measured for this machine and these thread counts), render the CPU repository, and run tritonserver in the
foreground on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002).

It stays the server's supervisor (perf.server.TritonServer with its watchdog): a Python-backend stub that dies
gets the server restarted, and SIGTERM/SIGINT stop it cleanly — live requests get their final response, and
no stub or shared-memory region outlives it, even when a client holds a gRPC stream open."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from export.exporter import export_models
from export.render import ServingSettings, render_repository
from perf.profile import ensure_profile
from perf.server import Ports, TritonServer, serve_in_foreground
from scheduler_backend.policies import POLICIES

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="model preset to export and serve (tiny, bench, sd15)")
    parser.add_argument("--checkpoint", type=Path, help="serve a local diffusers checkpoint instead of a preset")
    parser.add_argument("--policy", choices=POLICIES, default=ServingSettings.policy)
    parser.add_argument("--max-waiting-requests", type=int, default=ServingSettings.max_waiting_requests,
                        help="waiting-queue bound; beyond it requests get UNAVAILABLE at once")
    parser.add_argument("--max-running-requests", type=int, default=ServingSettings.max_running_requests,
                        help="requests admitted and not finished (denoising or decoding)")
    parser.add_argument("--queue-timeout-s", type=float, default=ServingSettings.queue_timeout_s,
                        help="a request waiting longer than this to join the batch gets UNAVAILABLE (0: no limit)")
    parser.add_argument("--vae-chunking", default=ServingSettings.vae_chunking,
                        help="VAE chunks: whole, stages (exact, default) or tiles[:RxC:overlap]")
    parser.add_argument("--address", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")


def serving_profile(model_dir: Path, settings: ServingSettings, runtime: str = "onnx") -> Path:
    """The latency profile for serving `model_dir` with `settings` (its thread counts) under `runtime`
    (perf/runtimes.py), measured if missing."""
    path = ensure_profile(model_dir, unet_threads=settings.unet_threads, vae_threads=settings.vae_threads,
                          runtime=runtime)
    print(f"latency profile: {path}", flush=True)
    return path


def run(args: argparse.Namespace) -> int:
    name = args.checkpoint.name if args.checkpoint else args.preset
    model_dir = export_models(args.checkpoint or args.preset, args.build_dir / "models" / name, seed=0, force=False)
    settings = ServingSettings(policy=args.policy, max_waiting_requests=args.max_waiting_requests,
                               max_running_requests=args.max_running_requests, queue_timeout_s=args.queue_timeout_s,
                               vae_chunking=args.vae_chunking)
    settings = replace(settings, profile=str(serving_profile(model_dir, settings)))
    repository = render_repository(model_dir, args.build_dir / "repository" / name, settings=settings)
    server = TritonServer(repository, Ports(args.http_port, args.grpc_port, args.metrics_port), log_path=None,
                          address=args.address)
    print(f"serving {model_dir} from {repository}", flush=True)
    return serve_in_foreground(server)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
