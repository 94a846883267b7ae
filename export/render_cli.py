"""`synerdiff render`: exported model directory -> Triton model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from export.render import RenderError, ServingSettings, TARGETS, render_repository
from scheduler_backend.policies import POLICIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServingSettings()
    parser.add_argument("--models", type=Path, required=True, help="exported model directory (manifest.json)")
    parser.add_argument("--out", type=Path, required=True, help="repository directory to (re)write")
    parser.add_argument("--target", choices=TARGETS, default="cpu")
    parser.add_argument("--policy", choices=POLICIES, default=defaults.policy)
    parser.add_argument("--max-waiting-requests", type=int, default=defaults.max_waiting_requests)
    parser.add_argument("--max-running-requests", type=int, default=defaults.max_running_requests)
    parser.add_argument("--unet-threads", type=int, default=defaults.unet_threads)
    parser.add_argument("--vae-threads", type=int, default=defaults.vae_threads)
    parser.add_argument("--text-encoder-threads", type=int, default=defaults.text_encoder_threads)
    parser.add_argument("--loop-tensors", default=defaults.loop_tensors,
                        help="where the diffusion loop keeps its tensors: numpy (host) or torch:<device> "
                             "(torch:cuda keeps them on the GPU across BLS calls); default: the target's")


def run(args: argparse.Namespace) -> int:
    settings = ServingSettings(policy=args.policy, max_waiting_requests=args.max_waiting_requests,
                               max_running_requests=args.max_running_requests, unet_threads=args.unet_threads,
                               vae_threads=args.vae_threads, text_encoder_threads=args.text_encoder_threads,
                               loop_tensors=args.loop_tensors)
    try:
        out = render_repository(args.models, args.out, args.target, settings)
    except (RenderError, FileNotFoundError) as error:
        print(f"render: {error}")
        return 2
    print(f"rendered {args.target} repository at {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m export.render_cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
