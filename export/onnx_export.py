"""ONNX export of the text encoder, UNet, VAE decoder and VAE stages with the legacy (TorchScript) exporter,
opset 17.

Graph contracts (docs/interfaces.md):
* text_encoder.onnx: ``input_ids`` int64 [B, 77] -> ``last_hidden_state`` f32 [B, 77, D]; dynamic B.
* unet.onnx: ``sample`` f32 [B, C, h, w], ``timestep`` f32 [B] (one per row), ``encoder_hidden_states``
  f32 [B, 77, D] -> ``noise_pred`` f32 [B, C, h, w]; dynamic B, h, w.
* vae_decoder.onnx: ``latent`` f32 [B, C, h, w], the raw latent (the graph divides by the VAE scaling factor and
  runs post_quant_conv) -> ``image`` f32 [B, 3, H, W]; dynamic B, h, w.
* vae_stage_<k>.onnx, k < K (export/vae_stages.py): ``hidden`` f32 -> ``hidden_out`` f32; stage 0 takes the raw
  latent, stage k the output of stage k - 1, the last returns the image; dynamic batch, height and width (the
  output's height and width are named apart from the input's: stages that upsample double them).

The legacy exporter traces Python branches on shapes once. That is safe here because the example inputs use
latent sides that are multiples of size_multiple / vae_scale_factor (diffusers' UNet only takes its
"forward upsample size" branch for other sides, which the manifest forbids), a batch below 64 (diffusers'
Upsample2D only adds a ``.contiguous()`` at 64 and up, which does not change values), and the text encoder's
branches (causal-mask shortcuts) depend only on the sequence length, which is fixed at 77.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from export.components import Components
from export.graphs import TextEncoderGraph, UNetGraph, VAEDecoderGraph
from export.layout import (TEXT_ENCODER_FILE, TEXT_MAX_LENGTH, UNET_FILE, VAE_DECODER_FILE, VAE_STAGE_INPUT,
                           VAE_STAGE_OUTPUT, vae_stage_file)
from export.vae_stages import build_vae_stages

OPSET_VERSION = 17
EXPORT_BATCH = 2  # example batch for tracing; every exported graph has a dynamic batch axis


def move_into_place(traced: Path, path: Path) -> None:
    """Move a freshly exported graph to ``path``. Graphs over 2 GB come out of the exporter as one file per
    weight; those are gathered into a single ``<name>.data`` file next to the graph (ORT finds it by itself)."""
    data_path = path.with_name(path.name + ".data")
    data_path.unlink(missing_ok=True)
    if len(list(traced.parent.iterdir())) == 1:
        traced.replace(path)
        return
    model = onnx.load(str(traced))  # pulls the per-weight files in
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_path.name, size_threshold=1024)
    data_path.chmod(path.stat().st_mode & 0o777)  # onnx creates it owner-only; readers may be another user


def _export(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path,
            input_names: list[str], output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}-", dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        _trace(module, example_inputs, traced, input_names, output_names, dynamic_axes)
        move_into_place(traced, path)
    return path


def _trace(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path,
           input_names: list[str], output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # Expected, see the module docstring: the legacy exporter is deprecated (DeprecationWarning); diffusers
        # branches on spatial/batch shapes and transformers on the (fixed, 77) sequence length (TracerWarning).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), example_inputs, str(path), dynamo=False, opset_version=OPSET_VERSION,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)


def example_latent_side(components: Components) -> int:
    """Latent side of the default image size."""
    return components.default_size // components.vae_scale_factor


def export_text_encoder(components: Components, out_dir: Path) -> Path:
    input_ids = torch.full((EXPORT_BATCH, TEXT_MAX_LENGTH), components.tokenizer.pad_id, dtype=torch.int64)
    input_ids[:, 0] = components.tokenizer.bos_id
    return _export(TextEncoderGraph(components.text_encoder), (input_ids,), out_dir / TEXT_ENCODER_FILE,
                   ["input_ids"], ["last_hidden_state"],
                   {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}})


def export_unet(components: Components, out_dir: Path) -> Path:
    side = example_latent_side(components)
    sample = torch.randn(EXPORT_BATCH, components.latent_channels, side, side)
    timestep = torch.tensor([999.0, 501.0][:EXPORT_BATCH], dtype=torch.float32)
    hidden = torch.randn(EXPORT_BATCH, TEXT_MAX_LENGTH, components.text_hidden_size)
    spatial = {0: "batch", 2: "latent_height", 3: "latent_width"}
    return _export(UNetGraph(components.unet), (sample, timestep, hidden), out_dir / UNET_FILE,
                   ["sample", "timestep", "encoder_hidden_states"], ["noise_pred"],
                   {"sample": spatial, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch"},
                    "noise_pred": spatial})


def export_vae_decoder(components: Components, out_dir: Path) -> Path:
    side = example_latent_side(components)
    latent = torch.randn(EXPORT_BATCH, components.latent_channels, side, side)
    return _export(VAEDecoderGraph(components.vae), (latent,), out_dir / VAE_DECODER_FILE,
                   ["latent"], ["image"],
                   {"latent": {0: "batch", 2: "latent_height", 3: "latent_width"},
                    "image": {0: "batch", 2: "image_height", 3: "image_width"}})


def export_vae_stages(components: Components, out_dir: Path) -> list[Path]:
    """vae_stage_<k>.onnx for every stage, each traced on the previous stage's output for the example latent."""
    side = example_latent_side(components)
    hidden = torch.randn(EXPORT_BATCH, components.latent_channels, side, side)
    dynamic_axes = {VAE_STAGE_INPUT: {0: "batch", 2: "height", 3: "width"},
                    VAE_STAGE_OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"}}
    paths = []
    for k, stage in enumerate(build_vae_stages(components.vae)):
        paths.append(_export(stage, (hidden,), out_dir / vae_stage_file(k), [VAE_STAGE_INPUT], [VAE_STAGE_OUTPUT],
                             dynamic_axes))
        with torch.no_grad():
            hidden = stage(hidden)
    return paths
