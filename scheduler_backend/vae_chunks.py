"""VAE chunking: one finished request's decode as a queue of chunks the planner can place one at a time.

Three granularities (`ChunkingSpec.mode`):
* ``whole``: one chunk, the full decode;
* ``stages``: the decoder's K sequential stages (exported as separate graphs): exact, the stitched
  result equals the full decode to float tolerance;
* ``tiles``: overlapping latent tiles decoded separately and blended with linear ramps across each
  overlap: approximate, because the decoder's GroupNorm statistics are taken per tile (docs/perf.md
  reports the error against the full decode; tests bound it).

A `VaeJob` is pure state: it says which chunk is next, builds that chunk's input from the latent (or from
the previous stage's output), and takes the chunk's output. Running the chunk is the executor's business.
Its arrays (latent, inputs, outputs, image) are those of the engine's `Arrays` implementation: host numpy, or device
tensors that never leave the device; only the tile blend weights are computed on the host.
Invariant: chunks complete strictly in order, and `image` exists exactly when every chunk has completed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scheduler_backend.arrays import NUMPY, Array, Arrays

MODES = ("whole", "stages", "tiles")
Window = tuple[int, int, int, int]  # y0, y1, x0, x1 in latent pixels, end exclusive


@dataclass(frozen=True)
class StageShapes:
    """Stage k of the decoder maps the latent [C, h, w] to [channels[k], h * scales[k], w * scales[k]]."""

    channels: tuple[int, ...]
    scales: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.channels)


@dataclass(frozen=True)
class ChunkingSpec:
    mode: str = "whole"
    tile_grid: tuple[int, int] = (2, 2)
    tile_overlap: int = 4  # latent pixels shared by neighbouring tiles (at least)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown VAE chunking {self.mode!r}; choose one of {', '.join(MODES)}")
        if min(self.tile_grid) < 1 or self.tile_overlap < 0:
            raise ValueError("tile grid must be >= 1x1 and the overlap >= 0")

    @classmethod
    def parse(cls, text: str) -> ChunkingSpec:
        """"whole", "stages", "tiles" or "tiles:RxC:overlap" (e.g. "tiles:2x2:4")."""
        mode, _, rest = text.strip().partition(":")
        if rest and mode != "tiles":
            raise ValueError(f"VAE chunking {text!r}: only 'tiles' takes a grid (e.g. tiles:2x2:4)")
        if not rest:
            return cls(mode=mode)
        grid_text, _, overlap_text = rest.partition(":")
        rows, _, cols = grid_text.partition("x")
        return cls(mode=mode, tile_grid=(int(rows), int(cols)), tile_overlap=int(overlap_text or 4))

    def describe(self) -> str:
        if self.mode != "tiles":
            return self.mode
        return f"tiles:{self.tile_grid[0]}x{self.tile_grid[1]}:{self.tile_overlap}"


def _axis_windows(length: int, tiles: int, overlap: int) -> list[tuple[int, int]]:
    if tiles == 1:
        return [(0, length)]
    side = min(length, math.ceil((length + (tiles - 1) * overlap) / tiles))
    starts = [round(i * (length - side) / (tiles - 1)) for i in range(tiles)]
    return [(start, start + side) for start in starts]


def _grid_axes(latent_hw: Sequence[int], grid: Sequence[int],
               overlap: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    return (_axis_windows(int(latent_hw[0]), int(grid[0]), overlap),
            _axis_windows(int(latent_hw[1]), int(grid[1]), overlap))


def tile_windows(latent_hw: Sequence[int], grid: Sequence[int], overlap: int) -> list[Window]:
    """Equal-size windows covering the latent, row-major; neighbours share at least `overlap` pixels
    (when the latent is long enough)."""
    rows, cols = _grid_axes(latent_hw, grid, overlap)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def _axis_weights(windows: list[tuple[int, int]], index: int, scale: int) -> np.ndarray:
    """Blend weights along one axis for window `index` (image pixels): 1 inside, linear ramps across the
    parts shared with the previous and the next window."""
    start, end = windows[index]
    weights = np.ones((end - start) * scale, dtype=np.float32)
    if index > 0:
        shared = (windows[index - 1][1] - start) * scale
        if shared > 0:
            weights[:shared] = (np.arange(shared, dtype=np.float32) + 0.5) / shared
    if index + 1 < len(windows):
        shared = (end - windows[index + 1][0]) * scale
        if shared > 0:
            weights[-shared:] = np.minimum(weights[-shared:],
                                           (np.arange(shared, 0, -1, dtype=np.float32) - 0.5) / shared)
    return weights


@dataclass(frozen=True)
class Chunk:
    kind: str  # the latency profile's key: "whole", "stage<k>", "tile"
    index: int  # stage number, or tile number (row-major)


class VaeJob:
    """The decode of one latent [C, h, w] into an image [3, h*f, w*f] (f = vae_scale_factor)."""

    def __init__(self, latent: Array, spec: ChunkingSpec, scale_factor: int, stages: StageShapes | None = None,
                 arrays: Arrays = NUMPY) -> None:
        self.latent = latent
        self.spec = spec
        self._scale = scale_factor
        self._stages = stages
        self._arrays = arrays
        self._hidden: Array | None = None  # the previous stage's output
        self._blend: tuple[Array, Array] | None = None  # weighted sum, weight sum
        self._image: Array | None = None
        latent_hw = latent.shape[1:]
        if spec.mode == "stages":
            if stages is None:
                raise ValueError("this model was exported without VAE stage graphs; re-export it")
            self._chunks = [Chunk(f"stage{k}", k) for k in range(stages.count)]
        elif spec.mode == "tiles":
            self._row_windows, self._col_windows = _grid_axes(latent_hw, spec.tile_grid, spec.tile_overlap)
            self._windows = tile_windows(latent_hw, spec.tile_grid, spec.tile_overlap)
            self._chunks = [Chunk("tile", i) for i in range(len(self._windows))]
        else:
            self._chunks = [Chunk("whole", 0)]
        self._done = 0

    @property
    def pending(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks[self._done:])

    @property
    def next_chunk(self) -> Chunk:
        return self._chunks[self._done]

    @property
    def done(self) -> bool:
        return self._done == len(self._chunks)

    @property
    def image(self) -> Array:
        if self._image is None:
            raise RuntimeError("the decode is not complete")
        return self._image

    @property
    def next_input_shape(self) -> tuple[int, ...]:
        return tuple(self.chunk_input().shape)

    def chunk_input(self) -> Array:
        """The next chunk's input, without a batch axis, as it lies: a tile is a view into the latent (stacking
        the inputs of a batch makes them contiguous)."""
        chunk = self.next_chunk
        if chunk.kind == "tile":
            y0, y1, x0, x1 = self._windows[chunk.index]
            return self.latent[:, y0:y1, x0:x1]
        if chunk.kind.startswith("stage") and chunk.index > 0:
            assert self._hidden is not None
            return self._hidden
        return self.latent

    def expected_output_shape(self) -> tuple[int, ...]:
        chunk, (h, w) = self.next_chunk, self.latent.shape[1:]
        if chunk.kind == "tile":
            y0, y1, x0, x1 = self._windows[chunk.index]
            return (3, (y1 - y0) * self._scale, (x1 - x0) * self._scale)
        if chunk.kind.startswith("stage"):
            assert self._stages is not None
            scale = self._stages.scales[chunk.index]
            return (self._stages.channels[chunk.index], h * scale, w * scale)
        return (3, h * self._scale, w * self._scale)

    def complete(self, output: Array) -> None:
        """Take the next chunk's output (no batch axis). Raises ValueError on a wrong shape."""
        expected = self.expected_output_shape()
        if tuple(output.shape) != expected:
            raise ValueError(f"VAE chunk {self.next_chunk.kind} returned shape {list(output.shape)}, "
                             f"expected {list(expected)}")
        chunk = self.next_chunk
        self._done += 1
        if chunk.kind == "tile":
            self._blend_tile(chunk.index, output)
        elif chunk.kind.startswith("stage") and not self.done:
            self._hidden = output
        else:
            self._image = output
        if self.done and self._blend is not None:
            total, weight = self._blend
            self._image = total / weight
            self._blend = None

    def _blend_tile(self, index: int, tile: Array) -> None:
        if self._blend is None:
            h, w = self.latent.shape[1:]
            shape = (3, h * self._scale, w * self._scale)
            self._blend = (self._arrays.zeros(shape), self._arrays.zeros(shape[1:]))
        cols = len(self._col_windows)
        weights = self._arrays.from_host(np.outer(_axis_weights(self._row_windows, index // cols, self._scale),
                                                  _axis_weights(self._col_windows, index % cols, self._scale)))
        y0, y1, x0, x1 = (v * self._scale for v in self._windows[index])
        total, weight = self._blend
        total[:, y0:y1, x0:x1] += tile * weights
        weight[y0:y1, x0:x1] += weights
