"""TensorRT optimization profiles of the `gpu` target (export/engine_profiles.py), checked without TensorRT: they
cover every shape the planner can send for the serving bound, they name the exported ONNX graphs' inputs with the
graphs' ranks and static dimensions, and the graphs run (ONNX Runtime) at each profile's min and opt shapes.
The max shapes are not run here: the tiny UNet at 32 rows of 128 x 128 latents needs tens of GB for attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from export.engine_profiles import (EngineSpec, ShapeRange, batch_buckets, check_against_graph, engine_specs,
                                    vae_stage_model)
from export.tensorrt_build import graph_inputs

MAX_RUNNING = 16


@pytest.fixture(scope="module")
def specs(manifest: dict[str, Any]) -> dict[str, EngineSpec]:
    return {spec.model: spec for spec in engine_specs(manifest, MAX_RUNNING)}


def test_batch_buckets_cover_one_to_max_without_gaps() -> None:
    assert batch_buckets(1) == [(1, 1)]
    assert batch_buckets(32) == [(1, 2), (3, 4), (5, 8), (9, 16), (17, 32)]
    assert batch_buckets(20) == [(1, 2), (3, 4), (5, 8), (9, 16), (17, 20)]
    for top in range(1, 70):
        buckets = batch_buckets(top)
        covered = [n for low, high in buckets for n in range(low, high + 1)]
        assert covered == list(range(1, top + 1))
    with pytest.raises(ValueError):
        batch_buckets(0)


def test_shape_range_refuses_inverted_or_mixed_ranks() -> None:
    with pytest.raises(ValueError):
        ShapeRange((2,), (1,), (3,))
    with pytest.raises(ValueError):
        ShapeRange((1, 4), (1,), (1, 4))
    with pytest.raises(ValueError):
        ShapeRange((0,), (1,), (1,))


def test_every_engine_of_the_export_is_specified(specs: dict[str, EngineSpec], manifest: dict[str, Any]) -> None:
    stages = [vae_stage_model(k) for k in range(len(manifest["vae_stages"]["files"]))]
    assert sorted(specs) == sorted(["text_encoder", "unet", "vae_decoder", *stages])
    assert specs["unet"].tensor_names == {"sample": "SAMPLE", "timestep": "TIMESTEP",
                                          "encoder_hidden_states": "ENCODER_HIDDEN_STATES",
                                          "noise_pred": "NOISE_PRED"}
    assert all(spec.fp16 for spec in specs.values())
    with pytest.raises(ValueError):
        engine_specs(manifest, 0)


def test_unet_profiles_cover_every_row_count_with_a_timestep_per_row(specs: dict[str, EngineSpec],
                                                                     manifest: dict[str, Any]) -> None:
    profiles = specs["unet"].profiles
    rows = [(p["SAMPLE"].min[0], p["SAMPLE"].max[0]) for p in profiles]
    assert rows == batch_buckets(2 * MAX_RUNNING)  # 1 row (no CFG, or skipped) .. 2 rows per running request
    factor = manifest["vae_scale_factor"]
    for profile in profiles:
        sample, timestep, text = profile["SAMPLE"], profile["TIMESTEP"], profile["ENCODER_HIDDEN_STATES"]
        for shapes in (sample, timestep, text):  # every input carries the same row count
            assert (shapes.min[0], shapes.opt[0], shapes.max[0]) == (sample.min[0], sample.opt[0], sample.max[0])
        assert len(timestep.min) == 1  # one timestep per row, not a scalar
        assert sample.opt[0] == sample.max[0]
        assert sample.min[2:] == (manifest["size_multiple"] // factor,) * 2
        assert sample.opt[2:] == (manifest["default_size"] // factor,) * 2
        assert sample.max[2:] == (manifest["max_size"] // factor,) * 2
        assert text.min[1:] == text.max[1:] == (77, manifest["text"]["hidden_size"])


def test_vae_profiles_cover_tiles_and_every_stage_input(specs: dict[str, EngineSpec], manifest: dict[str, Any]) -> None:
    latent = specs["vae_decoder"].profiles
    assert [(p["LATENT"].min[0], p["LATENT"].max[0]) for p in latent] == [(1, 1), (2, MAX_RUNNING)]
    assert all(p["LATENT"].min[2:] == (1, 1) for p in latent)  # a tile can be smaller than any whole latent
    factor, stages = manifest["vae_scale_factor"], manifest["vae_stages"]
    smallest, largest = manifest["size_multiple"] // factor, manifest["max_size"] // factor
    for k in range(len(stages["files"])):
        channels, scale = ((manifest["latent_channels"], 1) if k == 0
                           else (stages["channels"][k - 1], stages["scales"][k - 1]))
        for profile in specs[vae_stage_model(k)].profiles:
            hidden = profile["HIDDEN"]
            assert hidden.min[1:] == (channels, smallest * scale, smallest * scale)
            assert hidden.max[1:] == (channels, largest * scale, largest * scale)


def test_profiles_match_the_exported_graphs(specs: dict[str, EngineSpec], tiny_dir: Path) -> None:
    for spec in specs.values():
        check_against_graph(spec, graph_inputs(tiny_dir / spec.onnx_file))


def test_check_against_graph_names_the_problem(specs: dict[str, EngineSpec], tiny_dir: Path) -> None:
    unet = graph_inputs(tiny_dir / "unet.onnx")
    with pytest.raises(ValueError, match="inputs"):
        check_against_graph(specs["unet"], {**unet, "extra": [1]})
    with pytest.raises(ValueError, match="rank"):
        check_against_graph(specs["unet"], {**unet, "timestep": ["batch", 1]})
    with pytest.raises(ValueError, match="fixed at 8"):
        check_against_graph(specs["unet"], {**unet, "sample": ["batch", 8, "h", "w"]})


def _feeds(spec: EngineSpec, session: ort.InferenceSession, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    feeds: dict[str, Any] = {}
    for graph_input in session.get_inputs():
        shape = shapes[spec.tensor_names.get(graph_input.name, graph_input.name)]
        feeds[graph_input.name] = (np.full(shape, 49407, dtype=np.int64) if graph_input.type == "tensor(int64)"
                                   else np.ones(shape, dtype=np.float32))
    assert len(feeds) == len(shapes)
    return feeds


@pytest.mark.parametrize("model", ["text_encoder", "unet", "vae_decoder", "vae_stage_0", "vae_stage_1", "vae_stage_2"])
def test_graphs_run_at_each_profiles_min_and_opt_shapes(specs: dict[str, EngineSpec], tiny_dir: Path,
                                                        model: str) -> None:
    spec = specs[model]
    session = ort.InferenceSession(str(tiny_dir / spec.onnx_file), providers=["CPUExecutionProvider"])
    for profile in spec.profiles:
        for pick in ("min", "opt"):
            shapes = {name: getattr(shapes, pick) for name, shapes in profile.items()}
            (output,) = session.run(None, _feeds(spec, session, shapes))
            assert output.shape[0] == next(iter(shapes.values()))[0]
