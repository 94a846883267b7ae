"""export.render: the model repository rendered from the templates for a fake exported model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from export import render
from export.render import RenderError, ServingSettings, render_repository

PROFILED = ServingSettings(profile="/profiles/machine.json")

MODELS = {"diffusion", "preprocess", "text_encoder", "txt2img", "txt2img_unary", "unet", "vae_decoder"}


def fake_model_dir(root: Path, hidden_size: int = 48, latent_channels: int = 6, max_length: int = 77) -> Path:
    model_dir = root / "model"
    model_dir.mkdir()
    manifest = {"latent_channels": latent_channels, "text": {"max_length": max_length, "hidden_size": hidden_size},
                "vae_scale_factor": 8, "size_multiple": 8, "default_size": 512, "max_size": 1024}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


def config(out: Path, model: str) -> str:
    return (out / model / "config.pbtxt").read_text()


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    return render_repository(fake_model_dir(tmp_path), tmp_path / "repo", settings=PROFILED)


def test_every_model_gets_a_config_and_a_version_dir(rendered: Path) -> None:
    templates = {path.parent.name for path in render.TEMPLATES_DIR.glob("*/config.pbtxt.in")}
    assert templates >= MODELS
    assert {path.name for path in rendered.iterdir()} == templates
    for model in templates:
        assert (rendered / model / "config.pbtxt").is_file()
        assert (rendered / model / "1").is_dir()


def test_adapters_are_copied_and_the_ensemble_gets_an_empty_version_dir(rendered: Path) -> None:
    for template in render.TEMPLATES_DIR.glob("*/config.pbtxt.in"):
        adapter = template.parent / "model.py"
        copied = rendered / template.parent.name / "1" / "model.py"
        if adapter.exists():
            assert copied.read_bytes() == adapter.read_bytes()
        else:
            assert list(copied.parent.iterdir()) == []
    assert not (rendered / "txt2img" / "1" / "model.py").exists()
    assert (rendered / "unet" / "1" / "model.py").is_file()


def test_no_placeholder_is_left_in_any_config(rendered: Path) -> None:
    for path in rendered.glob("*/config.pbtxt"):
        assert "${" not in path.read_text(), path


def test_manifest_values_and_an_absolute_model_dir_are_substituted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_model_dir(tmp_path, hidden_size=48, latent_channels=6)
    monkeypatch.chdir(tmp_path)
    out = render_repository(Path("model"), tmp_path / "repo", settings=PROFILED)
    absolute = str((tmp_path / "model").resolve())
    assert f'string_value: "{absolute}"' in config(out, "diffusion")
    assert f'string_value: "{absolute}/unet.onnx"' in config(out, "unet")
    assert "dims: [ 2, 77, 48 ]" in config(out, "diffusion")
    assert "dims: [ -1, 77, 48 ]" in config(out, "text_encoder")
    assert "dims: [ -1, 6, -1, -1 ]" in config(out, "unet")
    assert "dims: [ 2, 77 ]" in config(out, "preprocess")


def test_serving_settings_are_substituted(tmp_path: Path) -> None:
    settings = ServingSettings(policy="sequential", max_waiting_requests=7, max_running_requests=3, unet_threads=5)
    out = render_repository(fake_model_dir(tmp_path), tmp_path / "repo", settings=settings)
    diffusion = config(out, "diffusion")
    assert 'key: "policy" value: { string_value: "sequential" }' in diffusion
    assert 'key: "max_waiting_requests" value: { string_value: "7" }' in diffusion
    assert 'key: "max_running_requests" value: { string_value: "3" }' in diffusion
    assert 'key: "intra_op_threads" value: { string_value: "5" }' in config(out, "unet")


def test_rendering_replaces_what_was_in_the_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    (out / "stale_model").mkdir(parents=True)
    render_repository(fake_model_dir(tmp_path), out, settings=PROFILED)
    assert not (out / "stale_model").exists()
    assert (out / "unet" / "config.pbtxt").is_file()


def test_unknown_target_raises_and_leaves_the_output_dir_alone(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    (out / "keep").mkdir(parents=True)
    model_dir = fake_model_dir(tmp_path)
    with pytest.raises(RenderError, match="unknown target 'tpu'; choose one of cpu, gpu"):
        render_repository(model_dir, out, target="tpu", settings=PROFILED)
    assert (out / "keep").is_dir()
    with pytest.raises(RenderError, match="needs TensorRT engines"):  # a known target whose files are missing
        render_repository(model_dir, out, target="gpu", settings=PROFILED)
    assert (out / "keep").is_dir()


def write_template(root: Path, model: str, text: str) -> None:
    (root / model).mkdir(parents=True)
    (root / model / "config.pbtxt.in").write_text(text)


def test_a_template_with_an_unknown_key_raises_naming_the_key(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "good", 'name: "good"\nparameters: { key: "d" value: "${model_dir}" }\n')
    write_template(templates, "broken", 'name: "broken"\nparameters: { key: "x" value: "${no_such_key}" }\n')
    monkeypatch.setattr(render, "TEMPLATES_DIR", templates)
    with pytest.raises(RenderError) as caught:
        render_repository(fake_model_dir(tmp_path), tmp_path / "repo", settings=PROFILED)
    assert "${no_such_key}" in str(caught.value)
    assert "broken" in str(caught.value)


def test_a_template_with_a_malformed_placeholder_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "m", 'value: "${model dir}"\n')
    monkeypatch.setattr(render, "TEMPLATES_DIR", templates)
    with pytest.raises(RenderError):
        render_repository(fake_model_dir(tmp_path), tmp_path / "repo", settings=PROFILED)


def test_a_temporary_template_dir_is_rendered_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "only", 'hidden: ${text_hidden_size} policy: ${policy} cost: $$5\n')
    (templates / "only" / "model.py").write_text("# adapter\n")
    monkeypatch.setattr(render, "TEMPLATES_DIR", templates)
    out = render_repository(fake_model_dir(tmp_path, hidden_size=64), tmp_path / "repo", settings=PROFILED)
    assert [path.name for path in out.iterdir()] == ["only"]
    assert config(out, "only") == "hidden: 64 policy: synerdiff cost: $5\n"
    assert (out / "only" / "1" / "model.py").read_text() == "# adapter\n"


def test_a_failed_render_leaves_the_previous_repository_intact(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    models, out = fake_model_dir(tmp_path), tmp_path / "repo"
    render_repository(models, out, settings=PROFILED)
    before = sorted(path.relative_to(out) for path in out.rglob("*"))
    templates = tmp_path / "bad-templates"
    write_template(templates, "broken", 'name: "${no_such_key}"\n')
    monkeypatch.setattr(render, "TEMPLATES_DIR", templates)
    with pytest.raises(RenderError):
        render_repository(models, out, settings=PROFILED)
    assert sorted(path.relative_to(out) for path in out.rglob("*")) == before
    assert not (tmp_path / "repo.rendering").exists()


def test_synerdiff_needs_a_profile_and_the_diffusion_config_names_it(tmp_path: Path) -> None:
    model_dir = fake_model_dir(tmp_path)
    with pytest.raises(RenderError, match="latency profile"):
        render_repository(model_dir, tmp_path / "repo", settings=ServingSettings(policy="synerdiff"))
    out = render_repository(model_dir, tmp_path / "repo", settings=PROFILED)
    config = (out / "diffusion" / "config.pbtxt").read_text()
    assert 'string_value: "/profiles/machine.json"' in config and 'string_value: "stages"' in config


def test_internal_models_get_the_engines_largest_call_as_their_input_bound(tmp_path: Path) -> None:
    out = render_repository(fake_model_dir(tmp_path), tmp_path / "repo",
                            settings=replace(PROFILED, max_running_requests=4))
    # unet: 2 rows per running request, each a 6 x 128 x 128 latent, a timestep and 77 x 48 text values
    rows, latent = 2 * 4, 6 * 128 * 128
    assert f'"max_input_elements" value: {{ string_value: "{rows * (latent + 1 + 77 * 48)}" }}' in config(out, "unet")
    assert f'"max_input_elements" value: {{ string_value: "{4 * 4 * latent}" }}' in config(out, "vae_decoder")
    for model in ("text_encoder", "vae_stages"):
        assert '"max_input_elements"' in config(out, model)
