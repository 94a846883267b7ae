"""Renders the Triton model repository from `model_repository/*/config*.pbtxt.in` for one target.

Each template is filled with `string.Template.substitute`: a key missing from the settings is an error
naming the template and the key, never a silently unfilled `${...}`. Each model's adapter is copied to
`<out>/<model>/1/model.py`, an engine of target `gpu` is placed at `<out>/<model>/1/model.plan` (hard-linked
when it can be, else copied); a model without either (the ensemble) gets an empty `1/`. Which templates,
adapters and engines each target uses: export/targets.py.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import model_repository
from export.targets import TARGET_SPECS, TARGETS, RepositoryModel, repository_models, target_values
from model_repository.bls_executor import torch_loop_device
from scheduler_backend.limits import Limits, ModelSpec
from scheduler_backend.policies import needs_profile

TEMPLATES_DIR = Path(model_repository.__file__).parent
__all__ = ["RenderError", "ServingSettings", "TARGETS", "render_repository"]


class RenderError(Exception):
    pass


@dataclass(frozen=True)
class ServingSettings:
    policy: str = "synerdiff"
    max_waiting_requests: int = 64
    max_running_requests: int = 16
    queue_timeout_s: float = 0.0  # how long a request may wait to join the batch (0: no limit)
    unet_threads: int = 2
    vae_threads: int = 2
    text_encoder_threads: int = 1
    vae_chunking: str = "stages"  # whole | stages | tiles[:RxC:overlap]
    profile: str = ""  # the latency profile JSON (needed by the synerdiff policies)
    loop_tensors: str = ""  # numpy | torch:<device>; "" for the target's choice (export/targets.py)


def template_values(model_dir: Path, settings: ServingSettings) -> dict[str, str]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    values = {
        "model_dir": str(model_dir.resolve()),
        "latent_channels": manifest["latent_channels"],
        "text_max_length": manifest["text"]["max_length"],
        "text_hidden_size": manifest["text"]["hidden_size"],
        **asdict(settings),
        **{f"{model}_max_input_elements": elements for model, elements in internal_call_elements(manifest, settings).items()},
    }
    return {key: str(value) for key, value in values.items()}


def internal_call_elements(manifest: dict[str, object], settings: ServingSettings) -> dict[str, int]:
    """The input-size bound of each internal model for these serving settings (`Limits.internal_call_elements`)."""
    limits = Limits(ModelSpec.from_manifest(manifest), max_running_requests=settings.max_running_requests)
    return limits.internal_call_elements()


def fill(template_path: Path, values: dict[str, str]) -> str:
    try:
        return string.Template(template_path.read_text()).substitute(values)
    except KeyError as missing:
        raise RenderError(f"{template_path}: no value for ${{{missing.args[0]}}}") from None
    except ValueError as error:
        raise RenderError(f"{template_path}: {error}") from None


def _write_model(model_out: Path, model: RepositoryModel, values: dict[str, str]) -> None:
    (model_out / "1").mkdir(parents=True)
    (model_out / "config.pbtxt").write_text(fill(model.template, {**values, **model.values}))
    if model.adapter is not None:
        shutil.copy(model.adapter, model_out / "1" / "model.py")
    if model.plan is not None:
        try:  # engines are large: share the built file when the file system allows it
            os.link(model.plan, model_out / "1" / "model.plan")
        except OSError:
            shutil.copy(model.plan, model_out / "1" / "model.plan")


def render_repository(model_dir: Path, out_dir: Path, target: str = "cpu",
                      settings: ServingSettings = ServingSettings()) -> Path:
    """Writes a complete model repository to `out_dir` (replacing what was there) and returns it."""
    if target not in TARGETS:
        raise RenderError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if needs_profile(settings.policy) and not settings.profile:
        raise RenderError(f"policy {settings.policy!r} needs a latency profile (ServingSettings.profile); "
                          f"measure one with `synerdiff profile --model-dir {model_dir}`")
    values = template_values(model_dir, settings)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    try:
        values["loop_tensors"] = settings.loop_tensors or TARGET_SPECS[target].loop_tensors
        torch_loop_device(values["loop_tensors"])
        values |= target_values(TARGET_SPECS[target], model_dir, manifest, settings.max_running_requests)
        models = repository_models(TARGET_SPECS[target], TEMPLATES_DIR, model_dir, manifest)
    except ValueError as error:
        raise RenderError(str(error)) from None
    staging = out_dir.with_name(out_dir.name + ".rendering")
    shutil.rmtree(staging, ignore_errors=True)
    try:  # render beside the old repository and swap at the end: a failure leaves the old one intact
        for model in models:
            _write_model(staging / model.name, model, values)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir
