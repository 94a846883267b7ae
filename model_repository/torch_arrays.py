"""The engine's `Arrays` (scheduler_backend/arrays.py) on torch tensors of one device: how a GPU loop keeps its
latents, text embeddings and VAE activations on the GPU from admission to the finished image.

The arithmetic is the numpy implementation's, operation for operation, in float32 (torch computes a float32 tensor
times a Python float in float32, as numpy does), so on the CPU the two give the same bits
(tests/unit/test_torch_arrays.py); on a GPU the same operations run as CUDA kernels.

Host arrays are copied in with `from_host` (small: per-row coefficients, the seeded starting noise, text
embeddings, tile blend weights) and the image leaves as uint8 after the device has converted it, a quarter of the
float32 bytes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class TorchArrays:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    @property
    def name(self) -> str:
        return f"torch:{self.device}"

    def from_host(self, array: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.array(array, dtype=np.float32))
        return host.to(self.device, copy=True)

    def stack(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(arrays))

    def concat(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(arrays))

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def to_host_images(self, decoded: torch.Tensor) -> np.ndarray:
        unit = (decoded / 2 + 0.5).clamp(0.0, 1.0)
        images = (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return images.cpu().numpy()

    def adopt(self, tensor: object) -> torch.Tensor:
        """A tensor another framework holds (anything with `__dlpack__`: a Triton BLS output), as this device's
        float32 tensor in memory of its own: copied once, on the device, so that the loop never keeps the
        producer's buffer (Triton's transfer pools) alive across steps."""
        return torch.from_dlpack(tensor).to(self.device, dtype=torch.float32, copy=True)  # type: ignore[arg-type]
