"""Triton's memory pools for the GPU targets, sized from the export and the serving bounds.

Two tritonserver pools carry the tensors that cross between models:
* `--cuda-memory-pool-byte-size=<gpu>:<bytes>` (Triton's default: 64 MiB): device buffers for tensors handed
  between models on the GPU, e.g. the stage activations the `vae_stages` router of the `gpu` target passes to and
  from the TensorRT stage engines, and the inputs the TensorRT engines receive;
  and, with the `diffusion` loop's tensors on the GPU (`loop_tensors` torch:cuda, the GPU targets' default), every
  tensor the loop hands a model and takes back;
* `--pinned-memory-pool-byte-size=<bytes>` (default: 256 MiB): page-locked host buffers that stage the copies
  between host and device: with the loop's tensors in host memory (`loop_tensors` numpy), every BLS call into a GPU
  model copies its inputs in and its outputs back through them.
When a pool runs short Triton falls back to slower paths (CUDA IPC, pageable copies) with a warning; never to an
error. So the sizes below are for speed, not for correctness.

Sizing rule (`memory_pools`): the tensors of one loop iteration in flight at once: one UNet call at its largest
(2 * max_running_requests rows at the largest latent: SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES, NOISE_PRED) and one
VAE call of `vae_images` images at the largest latent (input plus output of the biggest chunk of the chunking in
use: the whole decode for `whole` and `tiles`, the biggest stage for `stages`); plus a quarter for headroom,
rounded up to a MiB, and never below Triton's defaults. That goes to the pool the loop's tensors cross: the CUDA
pool always (the models hand tensors to each other there), the pinned pool only when the loop is on the host.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from export.engine_profiles import LatentSides, vae_stage_input_geometry
from export.layout import MANIFEST_FILE, TEXT_MAX_LENGTH
from model_repository.bls_executor import loop_on_gpu

FLOAT32_BYTES = 4
MIB = 2**20
DEFAULT_CUDA_POOL_BYTES = 64 * MIB  # Triton's defaults
DEFAULT_PINNED_POOL_BYTES = 256 * MIB
HEADROOM = 1.25


@dataclass(frozen=True)
class MemoryPools:
    cuda_pool_bytes: int
    pinned_pool_bytes: int

    def server_flags(self, gpu: int = 0) -> list[str]:
        return [f"--cuda-memory-pool-byte-size={gpu}:{self.cuda_pool_bytes}",
                f"--pinned-memory-pool-byte-size={self.pinned_pool_bytes}"]


def unet_call_bytes(manifest: Mapping[str, Any], rows: int, latent_side: int) -> int:
    """Inputs plus output of one UNet call of `rows` rows on a square latent."""
    latent = int(manifest["latent_channels"]) * latent_side**2
    text = TEXT_MAX_LENGTH * int(manifest["text"]["hidden_size"])
    return rows * (2 * latent + 1 + text) * FLOAT32_BYTES


def vae_chunk_bytes(manifest: Mapping[str, Any], latent_side: int) -> dict[str, int]:
    """Input plus output of each VAE chunk kind for one image with a square latent: "whole" and "stage<k>"."""
    factor = int(manifest["vae_scale_factor"])
    sizes = {"whole": (int(manifest["latent_channels"]) * latent_side**2 + 3 * (latent_side * factor)**2)}
    stages = manifest["vae_stages"]
    for stage, (channels, scale) in enumerate(zip(stages["channels"], stages["scales"])):
        in_channels, in_scale = vae_stage_input_geometry(manifest, stage)
        sizes[f"stage{stage}"] = (in_channels * (latent_side * in_scale)**2
                                  + int(channels) * (latent_side * int(scale))**2)
    return {kind: elements * FLOAT32_BYTES for kind, elements in sizes.items()}


def _pool(need_bytes: float, floor_bytes: int) -> int:
    return max(floor_bytes, math.ceil(need_bytes * HEADROOM / MIB) * MIB)


def memory_pools(manifest: Mapping[str, Any], max_running_requests: int, vae_chunking: str = "stages",
                 vae_images: int = 1, loop_on_gpu: bool = True) -> MemoryPools:
    """Pool sizes for serving this export with these bounds (the rule of the module docstring)."""
    side = LatentSides.from_manifest(manifest).max
    chunks = vae_chunk_bytes(manifest, side)
    if vae_chunking.split(":", 1)[0] == "stages":
        vae_bytes = max(size for kind, size in chunks.items() if kind.startswith("stage"))
    else:
        vae_bytes = chunks["whole"]
    need = unet_call_bytes(manifest, 2 * max_running_requests, side) + vae_images * vae_bytes
    pinned = DEFAULT_PINNED_POOL_BYTES if loop_on_gpu else _pool(need, DEFAULT_PINNED_POOL_BYTES)
    return MemoryPools(_pool(need, DEFAULT_CUDA_POOL_BYTES), pinned)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.gpu_memory",
                                     description="Print the tritonserver memory-pool flags for serving an export.")
    parser.add_argument("--models", type=Path, required=True, help="exported model directory (manifest.json)")
    parser.add_argument("--max-running-requests", type=int, default=16)
    parser.add_argument("--vae-chunking", default="stages")
    parser.add_argument("--loop-tensors", default="torch:cuda", help="where the loop keeps its tensors")
    args = parser.parse_args(argv)
    manifest = json.loads((args.models / MANIFEST_FILE).read_text())
    pools = memory_pools(manifest, args.max_running_requests, args.vae_chunking,
                         loop_on_gpu=loop_on_gpu(args.loop_tensors))
    print(" ".join(pools.server_flags()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
