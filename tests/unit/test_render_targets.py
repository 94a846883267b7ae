"""The repository of each target (export/targets.py, export/render.py): the same models and tensor contract on
every target, ONNX Runtime / torch / TensorRT where each belongs, and clear errors when a target's files are
missing. (The `gpu` target with engines: tests/unit/test_tensorrt_build.py.)"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from export.render import TEMPLATES_DIR, RenderError, ServingSettings, render_repository
from export.targets import TARGETS

SETTINGS = ServingSettings(policy="continuous")
SWAPPED = ("unet", "vae_decoder", "text_encoder", "vae_stages")  # the models whose implementation a target picks


def models(repository: Path) -> set[str]:
    return {path.name for path in repository.iterdir()}


def io_block(config: str) -> str:
    """The input and output declarations of a config (what callers rely on)."""
    return re.sub(r"\s+", " ", config[config.index("input ["):config.index("instance_group")])


def test_targets() -> None:
    assert TARGETS == ("cpu", "gpu", "gpu-torch", "cpu-torch")
    with pytest.raises(RenderError, match="unknown target"):
        render_repository(Path("."), Path("unused"), "tpu", SETTINGS)


@pytest.mark.parametrize("target", ["cpu-torch", "gpu-torch"])
def test_torch_targets_swap_the_four_models_for_torch_ones(tiny_dir: Path, tmp_path: Path, target: str) -> None:
    cpu = render_repository(tiny_dir, tmp_path / "cpu", "cpu", SETTINGS)
    torch = render_repository(tiny_dir, tmp_path / target, target, SETTINGS)
    assert models(torch) == models(cpu)
    on_gpu = target == "gpu-torch"
    for model in SWAPPED:
        config = (torch / model / "config.pbtxt").read_text()
        assert io_block(config) == io_block((cpu / model / "config.pbtxt").read_text())
        assert f'"{"cuda" if on_gpu else "cpu"}"' in config
        assert f"kind: {'KIND_GPU' if on_gpu else 'KIND_CPU'}" in config
        assert "torch_models" in (torch / model / "1" / "model.py").read_text()
        assert 'FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" }' in config  # a GPU loop's stay there
    unet = (torch / "unet" / "config.pbtxt").read_text()
    graphs = re.search(r'"max_cuda_graphs" value: \{ string_value: "(\d+)"', unet)
    assert graphs is not None and (int(graphs.group(1)) > 0) == on_gpu
    for model in models(cpu) - set(SWAPPED):  # the loop, preprocessing and the ensemble are the same everywhere ...
        assert (torch / model / "config.pbtxt").read_text() == (cpu / model / "config.pbtxt").read_text().replace(
            'loop_tensors" value: { string_value: "numpy"',  # ... but where the loop keeps its tensors
            f'loop_tensors" value: {{ string_value: "torch:{"cuda" if on_gpu else "cpu"}"')


@pytest.mark.parametrize("target, expected", [("cpu", "numpy"), ("cpu-torch", "torch:cpu"), ("gpu-torch", "torch:cuda")])
def test_each_target_chooses_where_the_loop_keeps_its_tensors_and_a_setting_overrides_it(
        tiny_dir: Path, tmp_path: Path, target: str, expected: str) -> None:
    def loop_tensors(repository: Path) -> str:
        found = re.search(r'"loop_tensors" value: \{ string_value: "([^"]*)"',
                          (repository / "diffusion" / "config.pbtxt").read_text())
        assert found is not None
        return found.group(1)

    assert loop_tensors(render_repository(tiny_dir, tmp_path / "default", target, SETTINGS)) == expected
    chosen = ServingSettings(policy="continuous", loop_tensors="torch:cpu")
    assert loop_tensors(render_repository(tiny_dir, tmp_path / "chosen", target, chosen)) == "torch:cpu"
    with pytest.raises(RenderError, match="loop_tensors 'torch:gpu'"):
        render_repository(tiny_dir, tmp_path / "bad", target, ServingSettings(policy="continuous",
                                                                               loop_tensors="torch:gpu"))


def test_every_variant_template_keeps_the_cpu_contract() -> None:
    """Tensor names, types and dims of a model are the same in all its templates (engines included)."""
    for template in TEMPLATES_DIR.glob("*/config.*.pbtxt.in"):
        default = template.parent / "config.pbtxt.in"
        if default.is_file():
            assert io_block(template.read_text()) == io_block(default.read_text()), template


def test_torch_target_needs_the_torch_modules(tiny_dir: Path, tmp_path: Path) -> None:
    old_export = tmp_path / "old"
    shutil.copytree(tiny_dir, old_export, ignore=shutil.ignore_patterns("torch"))
    with pytest.raises(RenderError, match="no torch modules"):
        render_repository(old_export, tmp_path / "repo", "gpu-torch", SETTINGS)
    assert not (tmp_path / "repo").exists()
