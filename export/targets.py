"""Which models, templates, adapters and engines make up the model repository of each target (export/render.py
fills and writes them).

Targets:
* `cpu`: every model a Python model; unet, vae_decoder, vae_stages and text_encoder run ONNX Runtime.
* `gpu`: unet, vae_decoder and text_encoder are TensorRT engines (`platform: "tensorrt_plan"`, KIND_GPU, their
  plans built by export/tensorrt_build.py into <export>/tensorrt/), plus one engine per VAE stage
  (`vae_stage_<k>`, from the `vae_stage_plan` template) behind a `vae_stages` router with the `cpu` contract.
* `gpu-torch`: the same four models as Python models running the export's torch modules on the GPU (fp16, CUDA
  graphs for the UNet): for GPUs without TensorRT.
* `cpu-torch`: the torch models on the CPU (fp32), to test that route where there is no GPU.

Convention in model_repository/<model>/: `config.pbtxt.in` and `model.py` serve every target, unless the target's
variant ("torch", "tensorrt") has its own `config.<variant>.pbtxt.in`: then that template is used with
`model_<variant>.py` as the adapter if there is one, and without an adapter it is an engine (`tensorrt` only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from export.engine_profiles import vae_stage_input_geometry, vae_stage_model
from export.layout import TORCH_MODULE_DIRS
from export.tensorrt_build import engine_dir, read_engines

STAGE_PLAN_TEMPLATE_DIR = "vae_stage_plan"
UNET_CUDA_GRAPHS = 16  # UNet shapes (rows, latent size) captured as CUDA graphs on `gpu-torch`; others run eagerly


@dataclass(frozen=True)
class Target:
    name: str
    variant: str  # "" (the default templates), "torch" or "tensorrt"
    torch_device: str = ""  # "cuda" or "cpu" for the torch variant
    loop_tensors: str = "numpy"  # where the `diffusion` loop keeps its tensors (model_repository/bls_executor.py)

    @property
    def on_gpu(self) -> bool:
        """Its models run on a GPU (TensorRT engines, or the torch models on CUDA)."""
        return self.variant == "tensorrt" or self.torch_device == "cuda"


# The GPU targets keep the loop's tensors on the GPU across BLS calls; `cpu-torch` takes the same DLPack route on the
# host, so that route is what its tests exercise.
TARGET_SPECS = {target.name: target for target in (
    Target("cpu", ""), Target("gpu", "tensorrt", loop_tensors="torch:cuda"),
    Target("gpu-torch", "torch", "cuda", loop_tensors="torch:cuda"),
    Target("cpu-torch", "torch", "cpu", loop_tensors="torch:cpu"))}
TARGETS = tuple(TARGET_SPECS)


@dataclass(frozen=True)
class RepositoryModel:
    """One model directory of a rendered repository."""

    name: str
    template: Path
    adapter: Path | None = None  # copied to 1/model.py
    plan: Path | None = None  # placed at 1/model.plan
    values: Mapping[str, str] = field(default_factory=dict)  # template values of this model only


def _profile_list(count: int) -> str:
    return ", ".join(f'"{index}"' for index in range(count))


def _engines(model_dir: Path) -> dict[str, Any]:
    engines = read_engines(model_dir)
    if engines is None:
        raise ValueError(f"target gpu needs TensorRT engines in {engine_dir(model_dir)}: build them with "
                         f"`python -m export.tensorrt_build --models {model_dir} --max-running-requests N` "
                         f"(needs tensorrt), or render --target gpu-torch")
    return engines


def _checked_engines(model_dir: Path, max_running_requests: int) -> dict[str, Any]:
    engines = _engines(model_dir)
    if max_running_requests > int(engines["max_running_requests"]):
        raise ValueError(f"the engines in {engine_dir(model_dir)} cover max_running_requests <= "
                         f"{engines['max_running_requests']}, not {max_running_requests}: rebuild them")
    return engines


def target_values(target: Target, model_dir: Path, manifest: Mapping[str, Any],
                  max_running_requests: int) -> dict[str, str]:
    """Template values the target adds to the serving settings and the manifest."""
    if target.variant == "torch":
        if not all((model_dir / directory / "config.json").is_file() for directory in TORCH_MODULE_DIRS.values()):
            raise ValueError(f"{model_dir} has no torch modules (an export older than format 3): export it again")
        return {"torch_device": target.torch_device, "torch_instance_kind": "KIND_GPU" if target.on_gpu else "KIND_CPU",
                "unet_cuda_graphs": str(UNET_CUDA_GRAPHS if target.on_gpu else 0)}
    if target.variant == "tensorrt":
        engines = _checked_engines(model_dir, max_running_requests)["engines"]
        values = {f"{name}_profiles": _profile_list(engines[name]["profiles"])
                  for name in ("unet", "vae_decoder", "text_encoder")}
        return {**values, "vae_stage_count": str(len(manifest["vae_stages"]["files"]))}
    return {}


def _plan(model_dir: Path, name: str) -> Path:
    plan = engine_dir(model_dir) / f"{name}.plan"
    if not plan.is_file():
        raise ValueError(f"engine {plan} is missing: build the engines again")
    return plan


def _stage_plans(templates_dir: Path, model_dir: Path, manifest: Mapping[str, Any]) -> list[RepositoryModel]:
    engines = _engines(model_dir)["engines"]
    stages = manifest["vae_stages"]
    models = []
    for stage in range(len(stages["files"])):
        name = vae_stage_model(stage)
        values = {"stage": str(stage), "stage_input_channels": str(vae_stage_input_geometry(manifest, stage)[0]),
                  "stage_output_channels": str(stages["channels"][stage]),
                  "stage_profiles": _profile_list(engines[name]["profiles"])}
        models.append(RepositoryModel(name, templates_dir / STAGE_PLAN_TEMPLATE_DIR / "config.tensorrt.pbtxt.in",
                                      plan=_plan(model_dir, name), values=values))
    return models


def repository_models(target: Target, templates_dir: Path, model_dir: Path,
                      manifest: Mapping[str, Any]) -> list[RepositoryModel]:
    """The model directories of `target`'s repository, by the convention of the module docstring."""
    models = []
    for directory in sorted(path for path in templates_dir.iterdir() if path.is_dir()):
        if directory.name == STAGE_PLAN_TEMPLATE_DIR:
            continue
        own = directory / f"config.{target.variant}.pbtxt.in"
        if target.variant and own.is_file():
            adapter = directory / f"model_{target.variant}.py"
            if adapter.is_file():
                models.append(RepositoryModel(directory.name, own, adapter=adapter))
            else:
                models.append(RepositoryModel(directory.name, own, plan=_plan(model_dir, directory.name)))
        elif (directory / "config.pbtxt.in").is_file():
            adapter = directory / "model.py"
            models.append(RepositoryModel(directory.name, directory / "config.pbtxt.in",
                                          adapter=adapter if adapter.is_file() else None))
    if target.variant == "tensorrt":
        models += _stage_plans(templates_dir, model_dir, manifest)
    return models
