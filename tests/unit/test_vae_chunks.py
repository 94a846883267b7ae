"""scheduler_backend.vae_chunks: tile windows, the tile blend (a partition of unity), the stage chain, chunk order
and the ChunkingSpec text form."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.vae_chunks import Chunk, ChunkingSpec, StageShapes, VaeJob, tile_windows

SCALE = 2
STAGES = StageShapes(channels=(8, 6, 3), scales=(1, 1, 2))


def latent(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, h, w)).astype(np.float32)


def run(job: VaeJob, decode: Callable[[Chunk, np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Run every chunk of `job` through `decode` (chunk, input) -> output; returns the inputs seen."""
    inputs = []
    while not job.done:
        chunk, piece = job.next_chunk, job.chunk_input()
        assert piece.shape == job.next_input_shape
        inputs.append(piece)
        job.complete(decode(chunk, piece))
    return inputs


# -- tile windows ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), rows=st.integers(1, 5), cols=st.integers(1, 5),
       overlap=st.integers(0, 8))
def test_tile_windows_cover_the_latent_with_equal_tiles_that_overlap_enough(h: int, w: int, rows: int, cols: int,
                                                                            overlap: int) -> None:
    windows = tile_windows((h, w), (rows, cols), overlap)
    assert len(windows) == rows * cols
    covered = np.zeros((h, w), dtype=int)
    for y0, y1, x0, x1 in windows:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        covered[y0:y1, x0:x1] += 1
    assert (covered >= 1).all()
    assert len({(y1 - y0, x1 - x0) for y0, y1, x0, x1 in windows}) == 1  # one tile shape: one batchable call
    # row-major; neighbours share at least `overlap` pixels when the side is long enough, else the whole side
    for axis, length, count in ((0, h, rows), (1, w, cols)):
        spans = [(window[2 * axis], window[2 * axis + 1]) for window in windows]
        line = spans[::cols] if axis == 0 else spans[:cols]
        assert [start for start, _ in line] == sorted(start for start, _ in line)
        for (start, end), (next_start, _) in zip(line, line[1:]):
            assert end - next_start >= min(overlap, length)


def test_a_one_by_one_grid_is_the_whole_latent() -> None:
    assert tile_windows((6, 10), (1, 1), 4) == [(0, 6, 0, 10)]


def test_tiles_larger_than_the_latent_are_the_whole_latent() -> None:
    assert tile_windows((3, 2), (2, 3), 4) == [(0, 3, 0, 2)] * 6


def test_a_two_by_two_grid_splits_each_side_with_the_overlap_in_the_middle() -> None:
    assert tile_windows((16, 16), (2, 2), 4) == [(0, 10, 0, 10), (0, 10, 6, 16), (6, 16, 0, 10), (6, 16, 6, 16)]


# -- tile blending -----------------------------------------------------------------------------------


def crop_decoder(image: np.ndarray, windows: list[tuple[int, int, int, int]]) -> Callable[[Chunk, np.ndarray],
                                                                                          np.ndarray]:
    def decode(chunk: Chunk, _: np.ndarray) -> np.ndarray:
        y0, y1, x0, x1 = (v * SCALE for v in windows[chunk.index])
        return image[:, y0:y1, x0:x1]
    return decode


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), rows=st.integers(1, 4), cols=st.integers(1, 4),
       overlap=st.integers(0, 6), seed=st.integers(0, 1000))
def test_blending_crops_of_one_image_gives_that_image_back(h: int, w: int, rows: int, cols: int, overlap: int,
                                                           seed: int) -> None:
    spec = ChunkingSpec("tiles", (rows, cols), overlap)
    image = np.random.default_rng(seed).uniform(-1, 1, (3, h * SCALE, w * SCALE)).astype(np.float32)
    job = VaeJob(latent(h, w), spec, SCALE)
    assert [chunk.kind for chunk in job.pending] == ["tile"] * rows * cols
    run(job, crop_decoder(image, tile_windows((h, w), (rows, cols), overlap)))
    assert job.image.shape == image.shape
    np.testing.assert_allclose(job.image, image, atol=1e-6, rtol=0)


def test_tile_inputs_are_the_latent_windows() -> None:
    source = latent(8, 12)
    job = VaeJob(source, ChunkingSpec("tiles", (2, 2), 2), SCALE)
    windows = tile_windows((8, 12), (2, 2), 2)
    inputs = run(job, lambda chunk, piece: np.zeros((3, piece.shape[1] * SCALE, piece.shape[2] * SCALE),
                                                     np.float32))
    for piece, (y0, y1, x0, x1) in zip(inputs, windows, strict=True):
        assert np.array_equal(piece, source[:, y0:y1, x0:x1])


def test_the_blend_ramps_linearly_across_the_overlap() -> None:
    # 1 x 2 tiles of an 8-wide latent, overlap 2: windows [0, 5) and [3, 8), sharing 2 latent = 4 image pixels.
    job = VaeJob(latent(4, 8), ChunkingSpec("tiles", (1, 2), 2), SCALE)
    run(job, lambda chunk, piece: np.full((3, 8, 10), float(chunk.index), np.float32))
    row = job.image[0, 0]
    expected = np.concatenate([np.zeros(6), (np.arange(4) + 0.5) / 4, np.ones(6)])
    np.testing.assert_allclose(row, expected, atol=1e-6)
    assert (job.image == job.image[:, :1, :]).all()  # the same across rows and channels


# -- stages ------------------------------------------------------------------------------------------


def fake_stage(chunk: Chunk, hidden: np.ndarray) -> np.ndarray:
    """Stage k: a deterministic map to StageShapes geometry, so each output records its input."""
    channels, scale = STAGES.channels[chunk.index], STAGES.scales[chunk.index]
    upsampled = hidden.repeat(scale, axis=1).repeat(scale, axis=2)
    repeated = np.concatenate([upsampled] * (channels // upsampled.shape[0] + 1))[:channels]
    return (repeated * np.float32(chunk.index + 2)).astype(np.float32)


def test_stages_chain_outputs_into_the_next_inputs_and_end_in_the_image() -> None:
    source = latent(4, 6)
    job = VaeJob(source, ChunkingSpec("stages"), SCALE, STAGES)
    assert job.pending == (Chunk("stage0", 0), Chunk("stage1", 1), Chunk("stage2", 2))
    outputs: list[np.ndarray] = []

    def decode(chunk: Chunk, hidden: np.ndarray) -> np.ndarray:
        outputs.append(fake_stage(chunk, hidden))
        return outputs[-1]

    inputs = run(job, decode)
    assert np.array_equal(inputs[0], source)
    assert all(np.array_equal(i, o) for i, o in zip(inputs[1:], outputs[:-1], strict=True))
    assert job.image is outputs[-1] and job.image.shape == (3, 4 * SCALE, 6 * SCALE)


def test_stages_need_stage_shapes() -> None:
    with pytest.raises(ValueError, match="stage"):
        VaeJob(latent(), ChunkingSpec("stages"), SCALE)


def test_a_wrong_output_shape_raises_naming_the_chunk_and_keeps_the_job_where_it_was() -> None:
    job = VaeJob(latent(4, 6), ChunkingSpec("stages"), SCALE, STAGES)
    job.complete(fake_stage(job.next_chunk, job.chunk_input()))
    with pytest.raises(ValueError, match=r"stage1.*\[5, 4, 6\].*\[6, 4, 6\]"):
        job.complete(np.zeros((5, 4, 6), np.float32))
    assert job.next_chunk == Chunk("stage1", 1) and not job.done
    whole = VaeJob(latent(4, 6), ChunkingSpec("whole"), SCALE)
    with pytest.raises(ValueError, match="whole"):
        whole.complete(np.zeros((3, 4, 6), np.float32))


def test_the_image_exists_exactly_when_every_chunk_completed() -> None:
    job = VaeJob(latent(4, 4), ChunkingSpec("tiles", (1, 2), 1), SCALE)
    assert job.next_input_shape == (4, 4, 3)
    with pytest.raises(RuntimeError, match="not complete"):
        _ = job.image
    job.complete(np.zeros((3, 8, 6), np.float32))
    assert job.pending == (Chunk("tile", 1),) and not job.done
    with pytest.raises(RuntimeError, match="not complete"):
        _ = job.image
    job.complete(np.zeros((3, 8, 6), np.float32))
    assert job.done and job.pending == () and job.image.shape == (3, 8, 8)


def test_a_whole_chunk_decodes_the_latent_in_one_piece() -> None:
    source = latent(4, 6)
    job = VaeJob(source, ChunkingSpec("whole"), SCALE)
    image = np.ones((3, 8, 12), np.float32)
    (piece,) = run(job, lambda chunk, piece: image)
    assert piece is source and job.image is image


# -- ChunkingSpec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, spec", [
    ("whole", ChunkingSpec("whole")),
    ("stages", ChunkingSpec("stages")),
    (" tiles ", ChunkingSpec("tiles")),
    ("tiles:3x2:6", ChunkingSpec("tiles", (3, 2), 6)),
    ("tiles:1x4", ChunkingSpec("tiles", (1, 4), 4)),
    ("tiles:2x2:0", ChunkingSpec("tiles", (2, 2), 0)),
])
def test_parse_reads_each_form(text: str, spec: ChunkingSpec) -> None:
    assert ChunkingSpec.parse(text) == spec


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(["whole", "stages", "tiles"]), rows=st.integers(1, 8), cols=st.integers(1, 8),
       overlap=st.integers(0, 16))
def test_describe_and_parse_round_trip(mode: str, rows: int, cols: int, overlap: int) -> None:
    spec = ChunkingSpec(mode, (rows, cols), overlap) if mode == "tiles" else ChunkingSpec(mode)
    assert ChunkingSpec.parse(spec.describe()) == spec


@pytest.mark.parametrize("text", ["", "wholes", "Tiles", "tiles:0x2:4", "tiles:2x2:-1", "tiles:2x", "tiles:axb:4"])
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        ChunkingSpec.parse(text)


def test_unknown_modes_list_the_choices() -> None:
    with pytest.raises(ValueError, match="whole, stages, tiles"):
        ChunkingSpec("layers")
