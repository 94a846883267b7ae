"""Memory-pool sizes of the GPU targets (export/gpu_memory.py): the rule of its docstring on the tiny export and on
an SD-1.5-shaped manifest, and the tritonserver flags they become."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from export.gpu_memory import (DEFAULT_CUDA_POOL_BYTES, DEFAULT_PINNED_POOL_BYTES, MIB, main, memory_pools,
                               unet_call_bytes, vae_chunk_bytes)

SD15_SHAPED = {"latent_channels": 4, "vae_scale_factor": 8, "size_multiple": 64, "default_size": 512,
               "max_size": 1024, "text": {"hidden_size": 768},
               "vae_stages": {"files": [f"vae_stage_{k}.onnx" for k in range(5)], "channels": [512, 512, 512, 256, 3],
                              "scales": [1, 2, 4, 8, 8]}}


def test_tensor_sizes_follow_the_shapes() -> None:
    # 2 rows x (sample + noise_pred 4x64x64 each, 1 timestep, 77x768 text) x 4 bytes
    assert unet_call_bytes(SD15_SHAPED, 2, 64) == 2 * (2 * 4 * 64 * 64 + 1 + 77 * 768) * 4
    chunks = vae_chunk_bytes(SD15_SHAPED, 64)  # a 512 x 512 image
    assert chunks["whole"] == (4 * 64 * 64 + 3 * 512 * 512) * 4
    assert chunks["stage0"] == (4 * 64 * 64 + 512 * 64 * 64) * 4
    assert chunks["stage3"] == (512 * 256 * 256 + 256 * 512 * 512) * 4  # 384 MiB: the biggest hand-over
    assert max(chunks, key=chunks.__getitem__) == "stage3"


def test_pools_cover_one_iteration_with_headroom() -> None:
    need = unet_call_bytes(SD15_SHAPED, 32, 128) + vae_chunk_bytes(SD15_SHAPED, 128)["stage3"]
    # the loop's tensors on the GPU cross the CUDA pool only; in host memory, the pinned pool too
    on_host = memory_pools(SD15_SHAPED, 16, "stages", loop_on_gpu=False)
    assert on_host.cuda_pool_bytes == on_host.pinned_pool_bytes == math.ceil(need * 1.25 / MIB) * MIB
    pools = memory_pools(SD15_SHAPED, 16, "stages")
    assert (pools.cuda_pool_bytes, pools.pinned_pool_bytes) == (on_host.cuda_pool_bytes, DEFAULT_PINNED_POOL_BYTES)
    two_images = memory_pools(SD15_SHAPED, 16, "stages", vae_images=2)
    assert two_images.cuda_pool_bytes > pools.cuda_pool_bytes
    # whole decodes and tiles hand over only latents and images: Triton's defaults are enough
    for chunking in ("whole", "tiles:2x2:4"):
        assert memory_pools(SD15_SHAPED, 16, chunking) == memory_pools(SD15_SHAPED, 1, "whole")
        assert memory_pools(SD15_SHAPED, 16, chunking).cuda_pool_bytes == DEFAULT_CUDA_POOL_BYTES


def test_pools_never_go_below_tritons_defaults(manifest: dict[str, Any]) -> None:
    pools = memory_pools(manifest, 1, "whole")
    assert (pools.cuda_pool_bytes, pools.pinned_pool_bytes) == (DEFAULT_CUDA_POOL_BYTES, DEFAULT_PINNED_POOL_BYTES)


def test_server_flags(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pools = memory_pools(SD15_SHAPED, 16, "stages", loop_on_gpu=False)
    assert pools.server_flags(gpu=1) == [f"--cuda-memory-pool-byte-size=1:{pools.cuda_pool_bytes}",
                                         f"--pinned-memory-pool-byte-size={pools.pinned_pool_bytes}"]
    assert main(["--models", str(tiny_dir), "--vae-chunking", "whole"]) == 0
    assert capsys.readouterr().out.split() == [f"--cuda-memory-pool-byte-size=0:{DEFAULT_CUDA_POOL_BYTES}",
                                               f"--pinned-memory-pool-byte-size={DEFAULT_PINNED_POOL_BYTES}"]
