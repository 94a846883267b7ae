"""`synerdiff profile`: measure (or reuse) the latency profile of an exported model and print it as a table.

The profile is written to <model dir>/profiles/<machine key>.json (perf.profile.profile_path); an existing one
measured on the same manifest is reused unless --force. Exit code 0, or 2 when the model directory is not an
export.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from export.render import ServingSettings
from perf.profile import DEFAULT_ROWS, THRESHOLD, ensure_profile, load_profile
from perf.runtimes import parse_runtime
from scheduler_backend.profile import LatencyProfile

EXIT_OK = 0
EXIT_USAGE = 2


def _count(text: str, minimum: int = 1) -> int:
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _rows(text: str) -> tuple[int, ...]:
    """"1,2,4" -> (1, 2, 4)."""
    try:
        return tuple(sorted({_count(part) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected row counts like 1,2,4, got {text!r}") from None


def _runtime(text: str) -> str:
    try:
        return parse_runtime(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _grid(text: str) -> tuple[int, int]:
    """"2x2" -> (2, 2)."""
    rows, _, cols = text.partition("x")
    try:
        return _count(rows), _count(cols)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a grid like 2x2, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServingSettings()
    parser.add_argument("--model-dir", type=Path, required=True, help="exported model directory (manifest.json)")
    parser.add_argument("--rows", type=_rows, default=DEFAULT_ROWS, metavar="R,R,...",
                        help=f"UNet batch sizes to measure (default {','.join(map(str, DEFAULT_ROWS))})")
    parser.add_argument("--repeats", type=_count, default=3, metavar="N", help="timed calls per latency, whose median counts (default 3)")
    parser.add_argument("--tile-grid", type=_grid, default=(2, 2), metavar="RxC", help="VAE tile grid (default 2x2)")
    parser.add_argument("--tile-overlap", type=lambda text: _count(text, 0), default=4, metavar="PX",
                        help="latent pixels shared by neighbouring tiles (default 4)")
    parser.add_argument("--unet-threads", type=_count, default=defaults.unet_threads, metavar="N",
                        help=f"intra-op threads of the UNet session (default {defaults.unet_threads}, as served)")
    parser.add_argument("--vae-threads", type=_count, default=defaults.vae_threads, metavar="N",
                        help=f"intra-op threads of the VAE sessions (default {defaults.vae_threads}, as served)")
    parser.add_argument("--runtime", type=_runtime, default="onnx", metavar="RUNTIME",
                        help="how the models run, as the target that serves them runs them: onnx (target cpu, "
                             "default), torch:cpu (cpu-torch) or torch:cuda[:N] (gpu-torch)")
    parser.add_argument("--force", action="store_true", help="measure again even if a profile exists")


def runtime_text(machine: dict[str, Any]) -> str:
    """"onnxruntime 1.23.2" or "torch 2.13.0 on NVIDIA H100 80GB HBM3" (a profile's machine facts)."""
    if "onnxruntime" in machine:
        return f"onnxruntime {machine['onnxruntime']}"
    return f"torch {machine['torch']} on {machine['device']}"


def format_profile(profile: LatencyProfile) -> str:
    """The profile as plain-text tables: UNet calls, then each VAE chunk kind with its contention factors."""
    meta = profile.metadata
    machine, tiling = meta["machine"], meta["tiling"]
    h, w = profile.latent_hw
    threshold = profile.threshold_rows(THRESHOLD)
    lines = [f"{meta['model']['preset']} at latent {h}x{w}; {machine['cpu']}, {machine['cpu_count']} CPUs, "
             f"{runtime_text(machine)}, unet {machine['unet_threads']} / vae {machine['vae_threads']} threads",
             "",
             f"{'UNet rows':>9}  {'seconds':>8}  {'rows/s':>7}  {'% of peak':>9}"]
    for rows in profile.unet_rows:
        rate = profile.rows_per_second(rows)
        lines.append(f"{rows:>9}  {profile.unet_call_seconds(rows):>8.4f}  {rate:>7.2f}  "
                     f"{100 * rate / profile.peak_rows_per_second:>8.0f}%")
    lines += [f"threshold ({100 * THRESHOLD:.0f}% of peak rows/s): batch {threshold}",
              "",
              f"{'VAE chunk':<9}  {'seconds':>8}  {'UNet x':>7}  {'VAE x':>7}   "
              f"(slowdowns when run together with a UNet call of batch {meta['contention_rows']})"]
    for kind, seconds in profile.vae_chunk_seconds.items():
        slowdown = profile.contention_for(kind)
        lines.append(f"{kind:<9}  {seconds:>8.4f}  {slowdown.unet_slowdown:>7.2f}  {slowdown.vae_slowdown:>7.2f}")
    tile_h, tile_w = tiling["tile_latent_hw"]
    lines += [f"tile: {tiling['grid'][0]}x{tiling['grid'][1]} grid, overlap {tiling['overlap']}, "
              f"tile latent {tile_h}x{tile_w}",
              f"measured {meta['created']} in {meta['profiling_seconds']:.1f} s "
              f"(median of {meta['repeats']} after {meta['warmups']} warm-up)"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        path = ensure_profile(args.model_dir, unet_threads=args.unet_threads, vae_threads=args.vae_threads,
                              runtime=args.runtime, force=args.force, rows=args.rows, repeats=args.repeats,
                              tile_grid=args.tile_grid, tile_overlap=args.tile_overlap)
    except FileNotFoundError as error:
        print(f"synerdiff profile: error: {args.model_dir} is not an exported model ({error.strerror}: "
              f"{error.filename})")
        return EXIT_USAGE
    print()
    print(format_profile(load_profile(path)))
    print(f"profile: {path}")
    return EXIT_OK


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.profile_cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
