"""The TensorRT engines of the `gpu` target as data: which ONNX graph each one is built from, what its tensors are
called in the engine (the Triton names, so `tensorrt_plan` configs match without an adapter) and its optimization
profiles (min/opt/max shape of every input). Pure: no tensorrt import, so it is tested and printed anywhere.

Each profile covers what the planner can send for the serving bounds it is computed for:
* `unet`: 1 .. 2 * max_running_requests rows (a guided request is 2 rows; without guidance, or with its
  unconditional row skipped by Skip-CFG, 1), each row with its own TIMESTEP; latent sides from the smallest image
  (size_multiple) to the largest (max_size), opt at the default size. The rows are split into buckets
  (1-2, 3-4, 5-8, ...), one profile each with opt at the bucket's top: TensorRT tunes kernels per profile, and
  Triton's TensorRT backend runs each request on the configured profile whose opt shape is closest.
* `text_encoder`: 1 .. 2 rows (one request's negative prompt and prompt).
* `vae_decoder`: 1 .. max_running_requests images; latent sides from 1 (a tile of `tiles:RxC:overlap` chunking
  can be smaller than the smallest whole latent) to the largest; two buckets, one image and several.
* `vae_stage_<k>`: stage k's input, [images, c_in, h * s_in, w * s_in] for every whole latent h x w, where stage 0
  takes the latent (c_in = latent channels, s_in = 1) and stage k > 0 stage k-1's output (manifest "vae_stages").

Invariant: for every spec, min <= opt <= max in every dimension, and every profile names every input of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from export.layout import TEXT_MAX_LENGTH

UNET_TENSORS = {"sample": "SAMPLE", "timestep": "TIMESTEP", "encoder_hidden_states": "ENCODER_HIDDEN_STATES",
                "noise_pred": "NOISE_PRED"}
TEXT_ENCODER_TENSORS = {"input_ids": "TOKEN_IDS", "last_hidden_state": "EMBEDDINGS"}
VAE_DECODER_TENSORS = {"latent": "LATENT", "image": "IMAGE"}
VAE_STAGE_TENSORS = ("HIDDEN", "HIDDEN_OUT")  # Triton names of a stage graph's input and output


@dataclass(frozen=True)
class ShapeRange:
    """The shapes one engine input accepts under one profile; TensorRT picks kernels for `opt`."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"shape range of mixed ranks: {self}")
        if not all(1 <= lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max)):
            raise ValueError(f"shape range must satisfy 1 <= min <= opt <= max in every dimension: {self}")


Profile = Mapping[str, ShapeRange]  # Triton input name -> its range


@dataclass(frozen=True)
class EngineSpec:
    """One engine: the model directory it serves, its ONNX source, its tensor names and its profiles."""

    model: str  # Triton model name; the plan goes to <repository>/<model>/1/model.plan
    onnx_file: str  # in the export directory
    tensor_names: Mapping[str, str]  # ONNX tensor name -> the name the engine (and Triton) uses
    profiles: tuple[Profile, ...]
    fp16: bool = True

    @property
    def plan_file(self) -> str:
        return f"{self.model}.plan"


@dataclass(frozen=True)
class LatentSides:
    """Latent side lengths a request can produce (smallest, default, largest)."""

    min: int
    default: int
    max: int

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> LatentSides:
        factor = int(manifest["vae_scale_factor"])
        return cls(int(manifest["size_multiple"]) // factor, int(manifest["default_size"]) // factor,
                   int(manifest["max_size"]) // factor)


def batch_buckets(max_count: int) -> list[tuple[int, int]]:
    """[1, 2], [3, 4], [5, 8], ... up to `max_count` (the last bucket ends at `max_count`)."""
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    buckets, low, high = [], 1, 2
    while low <= max_count:
        buckets.append((low, min(high, max_count)))
        low, high = high + 1, high * 2
    return buckets


def _batched(rows: tuple[int, int], opt_rows: int, rest_min: Sequence[int], rest_opt: Sequence[int],
             rest_max: Sequence[int]) -> ShapeRange:
    return ShapeRange((rows[0], *rest_min), (opt_rows, *rest_opt), (rows[1], *rest_max))


def unet_engine(manifest: Mapping[str, Any], max_running_requests: int) -> EngineSpec:
    sides, channels = LatentSides.from_manifest(manifest), int(manifest["latent_channels"])
    text = (TEXT_MAX_LENGTH, int(manifest["text"]["hidden_size"]))
    profiles = []
    for bucket in batch_buckets(2 * max_running_requests):
        profiles.append({
            "SAMPLE": _batched(bucket, bucket[1], (channels, sides.min, sides.min),
                               (channels, sides.default, sides.default), (channels, sides.max, sides.max)),
            "TIMESTEP": _batched(bucket, bucket[1], (), (), ()),
            "ENCODER_HIDDEN_STATES": _batched(bucket, bucket[1], text, text, text),
        })
    return EngineSpec("unet", manifest["files"]["unet"], UNET_TENSORS, tuple(profiles))


def text_encoder_engine(manifest: Mapping[str, Any]) -> EngineSpec:
    tokens = (TEXT_MAX_LENGTH,)
    profile = {"TOKEN_IDS": _batched((1, 2), 2, tokens, tokens, tokens)}
    return EngineSpec("text_encoder", manifest["files"]["text_encoder"], TEXT_ENCODER_TENSORS, (profile,))


def _image_buckets(max_images: int) -> list[tuple[int, int]]:
    return [(1, 1)] if max_images == 1 else [(1, 1), (2, max_images)]


def vae_decoder_engine(manifest: Mapping[str, Any], max_running_requests: int) -> EngineSpec:
    sides, channels = LatentSides.from_manifest(manifest), int(manifest["latent_channels"])
    profiles = tuple({"LATENT": _batched(bucket, bucket[1], (channels, 1, 1), (channels, sides.default, sides.default),
                                         (channels, sides.max, sides.max))}
                     for bucket in _image_buckets(max_running_requests))
    return EngineSpec("vae_decoder", manifest["files"]["vae_decoder"], VAE_DECODER_TENSORS, profiles)


def vae_stage_model(stage: int) -> str:
    return f"vae_stage_{stage}"


def vae_stage_input_geometry(manifest: Mapping[str, Any], stage: int) -> tuple[int, int]:
    """(channels, scale) of stage `stage`'s input relative to the latent."""
    stages = manifest["vae_stages"]
    if stage == 0:
        return int(manifest["latent_channels"]), 1
    return int(stages["channels"][stage - 1]), int(stages["scales"][stage - 1])


def vae_stage_engines(manifest: Mapping[str, Any], max_running_requests: int) -> list[EngineSpec]:
    sides, stages = LatentSides.from_manifest(manifest), manifest["vae_stages"]
    hidden_in, hidden_out = VAE_STAGE_TENSORS
    engines = []
    for stage, onnx_file in enumerate(stages["files"]):
        channels, scale = vae_stage_input_geometry(manifest, stage)
        low, mid, high = (sides.min * scale, sides.default * scale, sides.max * scale)
        profiles = tuple({hidden_in: _batched(bucket, bucket[1], (channels, low, low), (channels, mid, mid),
                                              (channels, high, high))}
                         for bucket in _image_buckets(max_running_requests))
        engines.append(EngineSpec(vae_stage_model(stage), onnx_file,
                                  {stages["input"]: hidden_in, stages["output"]: hidden_out}, profiles))
    return engines


def engine_specs(manifest: Mapping[str, Any], max_running_requests: int) -> list[EngineSpec]:
    """Every engine of the `gpu` target for an export (its manifest) and a running-request bound."""
    if max_running_requests < 1:
        raise ValueError(f"max_running_requests must be >= 1, got {max_running_requests}")
    return [text_encoder_engine(manifest), unet_engine(manifest, max_running_requests),
            vae_decoder_engine(manifest, max_running_requests), *vae_stage_engines(manifest, max_running_requests)]


def check_against_graph(spec: EngineSpec, graph_inputs: Mapping[str, Sequence[int | str]]) -> None:
    """Raise ValueError unless every profile names exactly the graph's inputs (by their engine names), with the
    graph's rank, and agrees with every static dimension. `graph_inputs`: ONNX input name -> dims (a str for a
    dynamic one), as the ONNX file declares them."""
    expected = {spec.tensor_names.get(name, name): dims for name, dims in graph_inputs.items()}
    for index, profile in enumerate(spec.profiles):
        if set(profile) != set(expected):
            raise ValueError(f"{spec.model} profile {index}: inputs {sorted(profile)}, graph has {sorted(expected)}")
        for name, shapes in profile.items():
            dims = expected[name]
            if len(shapes.min) != len(dims):
                raise ValueError(f"{spec.model} profile {index}: {name} has rank {len(shapes.min)}, "
                                 f"graph rank {len(dims)}")
            for axis, dim in enumerate(dims):
                if isinstance(dim, int) and not shapes.min[axis] == shapes.max[axis] == dim:
                    raise ValueError(f"{spec.model} profile {index}: {name} axis {axis} is fixed at {dim} in the "
                                     f"graph, profile allows {shapes.min[axis]}..{shapes.max[axis]}")
