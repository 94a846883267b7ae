"""Where the loop's tensors live: the few array operations the engine and `VaeJob` cannot write with operators alone,
behind one small interface, so that the same core runs on numpy arrays in host memory (`NUMPY`, the default) or on
a device's tensors (model_repository/torch_arrays.py, which keeps a GPU loop's tensors on the GPU between its BLS
calls).

Everything else the core does to its arrays is written in what numpy arrays and torch tensors share: arithmetic
operators with arrays and Python floats, basic slicing, indexing the first axis with a list of ints, `.shape`,
`.ndim`, `.reshape(tuple)` and iteration over the first axis. Invariant of every implementation: an operation is
elementwise float32 IEEE arithmetic, so a row's result never depends on the rest of its batch and the same
request gives the same image on every implementation that runs the same models on the same device kind.

Host data enters only through `from_host` (float32 numpy arrays: seeded noise, per-row coefficients, text
embeddings, tile blend weights) and leaves only through `to_host_images` (the finished uint8 image).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

Array = Any  # an np.ndarray on `NUMPY`; the implementation's own tensor type elsewhere


class Arrays(Protocol):
    @property
    def name(self) -> str:
        """For logs: "numpy", "torch:cuda:0", ..."""
        ...

    def from_host(self, array: np.ndarray) -> Array:
        """A float32 numpy array as this implementation's array (a copy; the caller may reuse `array`)."""
        ...

    def stack(self, arrays: Sequence[Array]) -> Array:
        """Along a new first axis, into fresh contiguous memory (the inputs may be views)."""
        ...

    def concat(self, arrays: Sequence[Array]) -> Array:
        """Along the existing first axis, into fresh contiguous memory."""
        ...

    def zeros(self, shape: tuple[int, ...]) -> Array:
        """float32 zeros."""
        ...

    def to_host_images(self, decoded: Array) -> np.ndarray:
        """VAE output [B, 3, H, W] in about [-1, 1] -> host uint8 [B, H, W, 3], as diffusers post-processes
        (clip to [0, 1], scale by 255, round half to even)."""
        ...


class NumpyArrays:
    name = "numpy"

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, dtype=np.float32)

    def stack(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(arrays)

    def concat(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def to_host_images(self, decoded: np.ndarray) -> np.ndarray:
        unit = np.clip(decoded / 2 + 0.5, 0.0, 1.0)
        return np.ascontiguousarray((unit * 255).round().astype(np.uint8).transpose(0, 2, 3, 1))


NUMPY = NumpyArrays()


def per_row(values: Array, like: Array) -> Array:
    """View a [B] vector as [B, 1, ..., 1] so that it broadcasts over the rows of `like` ([B, ...])."""
    if tuple(values.shape) != tuple(like.shape[:1]):
        raise ValueError(f"expected one value per row, shape {tuple(like.shape[:1])}, got {tuple(values.shape)}")
    return values.reshape(tuple(values.shape) + (1,) * (like.ndim - 1))
