"""Structural VAE stages: chaining the stage graphs reproduces the full decoder, each stage has the manifest's
geometry, exports without them are stale, and the `vae_stages` Triton model serves them (with a fake edge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.components import build_components
from export.layout import EXPORT_INFO_FILE, MANIFEST_FILE
from export.manifest import is_up_to_date
from export.vae_stages import build_vae_stages
from export.verify import RELATIVE_TOLERANCE
from model_repository import triton_edge
from model_repository.staged_vae import VaeStagesModel, stage_index
from scheduler_backend.errors import ExecutionFailed, InvalidArgument

SEED = 0


def run_stages(tiny_dir: Path, manifest: dict[str, Any], latent: np.ndarray) -> list[np.ndarray]:
    """Every stage's output, chaining the stage graphs from ``latent``."""
    stages = manifest["vae_stages"]
    outputs, hidden = [], latent
    for name in stages["files"]:
        session = ort.InferenceSession(str(tiny_dir / name), providers=["CPUExecutionProvider"])
        (hidden,) = session.run([stages["output"]], {stages["input"]: hidden})
        outputs.append(hidden)
    return outputs


def full_decode(tiny_dir: Path, latent: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(tiny_dir / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"latent": latent})[0]


def raw_latent(batch: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    """~N(0, 1) / scaling_factor (the tiny VAE's is diffusers' default 0.18215), like a denoised latent."""
    return np.random.default_rng(seed).standard_normal((batch, 4, height, width), dtype=np.float32) / 0.18215


def test_manifest_names_one_stage_per_up_block_plus_one(tiny_dir: Path, manifest: dict[str, Any]) -> None:
    stages = manifest["vae_stages"]
    assert stages == {"files": ["vae_stage_0.onnx", "vae_stage_1.onnx", "vae_stage_2.onnx"],
                      "input": "hidden", "output": "hidden_out", "channels": [64, 64, 3], "scales": [1, 2, 2]}
    assert stages["scales"][-1] == manifest["vae_scale_factor"]
    assert all((tiny_dir / name).is_file() for name in stages["files"])


@pytest.mark.parametrize("height, width", [(16, 16), (12, 20)])
def test_chained_stages_equal_the_full_decoder(tiny_dir: Path, manifest: dict[str, Any], height: int,
                                               width: int) -> None:
    latent = raw_latent(2, height, width)
    stitched = run_stages(tiny_dir, manifest, latent)[-1]
    image = full_decode(tiny_dir, latent)
    assert stitched.shape == image.shape == (2, 3, height * 2, width * 2)
    assert np.max(np.abs(stitched - image)) <= RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(image))))


def test_stage_outputs_have_the_manifest_geometry(tiny_dir: Path, manifest: dict[str, Any]) -> None:
    stages = manifest["vae_stages"]
    outputs = run_stages(tiny_dir, manifest, raw_latent(3, 12, 20))
    assert [out.shape for out in outputs] == [(3, c, 12 * s, 20 * s)
                                              for c, s in zip(stages["channels"], stages["scales"])]


def test_torch_stages_are_exactly_vae_decode() -> None:
    vae = build_components("tiny", SEED).vae
    latent = torch.from_numpy(raw_latent(2, 8, 12))
    hidden = latent
    with torch.no_grad():
        for stage in build_vae_stages(vae):
            hidden = stage(hidden)
        expected = vae.decode(latent / vae.config.scaling_factor, return_dict=False)[0]
    assert torch.equal(hidden, expected)


def test_an_export_without_vae_stages_is_not_up_to_date(tiny_dir: Path, tmp_path: Path) -> None:
    old = shutil.copytree(tiny_dir, tmp_path / "old")
    assert is_up_to_date(old, "preset:tiny", SEED, "auto")
    manifest, info = (json.loads((old / name).read_text()) for name in (MANIFEST_FILE, EXPORT_INFO_FILE))
    (old / MANIFEST_FILE).write_text(json.dumps({k: v for k, v in manifest.items() if k != "vae_stages"}))
    assert not is_up_to_date(old, "preset:tiny", SEED, "auto")
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    (old / EXPORT_INFO_FILE).write_text(json.dumps({k: v for k, v in info.items() if k != "format_version"}))
    assert not is_up_to_date(old, "preset:tiny", SEED, "auto")
    (old / EXPORT_INFO_FILE).write_text(json.dumps(info))
    (old / "vae_stage_1.onnx").unlink()
    assert not is_up_to_date(old, "preset:tiny", SEED, "auto")


@pytest.mark.parametrize("stage", [-1, 3])
def test_a_stage_out_of_range_is_an_invalid_argument(stage: int) -> None:
    with pytest.raises(InvalidArgument, match=r"STAGE: must be in \[0, 2\]"):
        stage_index(np.array([stage], dtype=np.int32), 3)


@pytest.fixture
def served(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> VaeStagesModel:
    """The Triton model over the tiny export, with the edge faked: a request is a dict of input arrays, a
    response ("ok", outputs) or ("error", the SynerDiffError)."""
    monkeypatch.setattr(triton_edge, "input_arrays", lambda request, names, adopt=None: {n: request.get(n) for n in names})
    monkeypatch.setattr(triton_edge, "response", lambda outputs: ("ok", dict(outputs)))
    monkeypatch.setattr(triton_edge, "error_response", lambda error: ("error", error))
    monkeypatch.setattr(triton_edge, "log_error", lambda message: None)
    parameters = {"model_dir": str(tiny_dir), "intra_op_threads": "1"}
    model = VaeStagesModel()
    model.initialize({"model_name": "vae_stages", "model_config": json.dumps(
        {"parameters": {key: {"string_value": value} for key, value in parameters.items()}})})
    return model


def test_the_triton_model_chains_to_the_full_decoder(served: VaeStagesModel, tiny_dir: Path,
                                                     manifest: dict[str, Any]) -> None:
    latent = raw_latent(2, 12, 20)
    hidden = latent
    for k in range(len(manifest["vae_stages"]["files"])):
        ((status, outputs),) = served.execute([{"STAGE": np.array([k], np.int32), "HIDDEN": hidden}])
        assert status == "ok"
        hidden = outputs["HIDDEN_OUT"]
    np.testing.assert_array_equal(hidden, run_stages(tiny_dir, manifest, latent)[-1])


def test_the_triton_model_answers_bad_requests_with_errors(served: VaeStagesModel) -> None:
    latent = raw_latent(1, 8, 8)
    replies = served.execute([{"STAGE": np.array([3], np.int32), "HIDDEN": latent},
                              {"STAGE": np.array([0], np.int32)},
                              {"STAGE": np.array([1], np.int32), "HIDDEN": latent},  # 4 channels, stage 1 takes 64
                              {"STAGE": np.array([0], np.int32), "HIDDEN": latent}])
    (status, error), (_, missing), (_, failed), (ok, _) = replies
    assert status == "error" and isinstance(error, InvalidArgument) and error.field == "STAGE"
    assert isinstance(missing, InvalidArgument) and missing.field == "HIDDEN"
    assert isinstance(failed, ExecutionFailed) and failed.message == "vae_stages: inference failed"
    assert ok == "ok"
