"""Post-export checks: onnx.checker, then ONNX Runtime (CPU) against torch on a few shapes per graph.

Shapes cover what the exported graphs promise beyond the traced example: a batch of 1 and a batch of 3 (UNet,
with three different timesteps, one of them fractional as Euler uses), a batch of 2 and a non-square latent
(UNet and VAE). Tolerance: ``max |ORT - torch| <= RELATIVE_TOLERANCE * max(1, max |torch|)``, i.e. 1e-3 for
outputs of magnitude ~1, scaled up for larger outputs (random-weight VAEs reach |x| ~ 5). Measured differences
are ~1e-6 (UNet) to ~1e-5 (VAE); anything near the tolerance means a broken graph, not float noise.

The VAE stage graphs are checked as a chain: run one after another in ORT, they must give vae_decoder.onnx's
image (same tolerance, relative to max |image|), and every stage's output must be [B, c_k, h * s_k, w * s_k] for
a latent [B, C, h, w], with c_k, s_k the same for every latent: the geometry the manifest records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.components import Components
from export.errors import VerificationError
from export.layout import TEXT_MAX_LENGTH, VAE_STAGE_INPUT
from export.graphs import TextEncoderGraph, UNetGraph, VAEDecoderGraph
from export.onnx_export import example_latent_side

RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class GraphCheck:
    """Result of comparing one ONNX graph with its torch module."""

    compared: ClassVar[tuple[str, str]] = ("ORT", "torch")  # (what was checked, the reference)

    graph: str
    max_abs_diff: float
    max_abs_reference: float
    tolerance: float
    shapes: tuple[str, ...]  # the input shapes that were compared

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        checked, reference = self.compared
        return (f"{self.graph}: max |{checked} - {reference}| = {self.max_abs_diff:.2e} (max |{reference}| = "
                f"{self.max_abs_reference:.2f}, tolerance {self.tolerance:.1e}; {', '.join(self.shapes)})")

    def record(self) -> dict[str, Any]:
        """The result for export_info.json."""
        return {key: value for key, value in asdict(self).items() if key != "graph"}


@dataclass(frozen=True)
class StagesCheck(GraphCheck):
    """The VAE stages chained in ORT against vae_decoder.onnx in ORT, and the stages' output geometry: for a raw
    latent [B, C, h, w], stage k outputs [B, channels[k], h * scales[k], w * scales[k]]."""

    compared: ClassVar[tuple[str, str]] = ("stitched stages", "vae_decoder")

    channels: tuple[int, ...]
    scales: tuple[int, ...]

    def describe(self) -> str:
        return f"{super().describe()}; stage channels {list(self.channels)}, scales {list(self.scales)}"


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(graph: str, session: ort.InferenceSession, module: torch.nn.Module,
             cases: list[dict[str, np.ndarray]]) -> GraphCheck:
    max_diff, max_ref, shapes = 0.0, 0.0, []
    for feeds in cases:
        (onnx_out,) = session.run(None, feeds)
        with torch.no_grad():
            torch_out = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        if onnx_out.shape != torch_out.shape:
            raise VerificationError(f"{graph}: ORT shape {onnx_out.shape} != torch shape {torch_out.shape}")
        max_diff = max(max_diff, float(np.max(np.abs(onnx_out - torch_out))))
        max_ref = max(max_ref, float(np.max(np.abs(torch_out))))
        shapes.append("x".join(str(d) for d in next(iter(feeds.values())).shape))
    tolerance = RELATIVE_TOLERANCE * max(1.0, max_ref)
    return GraphCheck(graph, max_diff, max_ref, tolerance, tuple(shapes))


def check_text_encoder(components: Components, path: Path, generator: np.random.Generator) -> GraphCheck:
    tokenizer = components.tokenizer
    prompt = tokenizer.tokenizer.encode("a photo of an astronaut riding a horse").ids[:TEXT_MAX_LENGTH]
    padded = np.full((1, TEXT_MAX_LENGTH), tokenizer.pad_id, dtype=np.int64)
    padded[0, : len(prompt)] = prompt
    random_ids = generator.integers(0, tokenizer.vocab_size, size=(2, TEXT_MAX_LENGTH), dtype=np.int64)
    random_ids[:, 0], random_ids[:, -1] = tokenizer.bos_id, tokenizer.eos_id
    cases = [{"input_ids": padded}, {"input_ids": random_ids}]
    return _compare("text_encoder", open_session(path), TextEncoderGraph(components.text_encoder), cases)


def _non_square_latent(components: Components) -> tuple[int, int]:
    side = example_latent_side(components)
    latent_multiple = components.size_multiple // components.vae_scale_factor
    return side, max(latent_multiple, side - latent_multiple)


def check_unet(components: Components, path: Path, generator: np.random.Generator) -> GraphCheck:
    side = example_latent_side(components)
    channels, hidden = components.latent_channels, components.text_hidden_size

    def case(batch: int, height: int, width: int, timesteps: list[float]) -> dict[str, np.ndarray]:
        return {"sample": generator.standard_normal((batch, channels, height, width), dtype=np.float32),
                "timestep": np.array(timesteps, dtype=np.float32),
                "encoder_hidden_states": generator.standard_normal((batch, TEXT_MAX_LENGTH, hidden),
                                                                   dtype=np.float32)}

    cases = [case(1, side, side, [999.0]), case(3, side, side, [999.0, 500.5, 1.0]),
             case(2, *_non_square_latent(components), [761.0, 21.0])]
    return _compare("unet", open_session(path), UNetGraph(components.unet), cases)


def _raw_latents(components: Components, generator: np.random.Generator) -> list[np.ndarray]:
    """A square latent of batch 1 and a non-square one of batch 2, ~N(0, scaling_factor^2) like raw latents."""
    side = example_latent_side(components)
    scale = float(components.vae.config.scaling_factor)
    return [scale * generator.standard_normal((batch, components.latent_channels, height, width), dtype=np.float32)
            for batch, height, width in ((1, side, side), (2, *_non_square_latent(components)))]


def check_vae_decoder(components: Components, path: Path, generator: np.random.Generator) -> GraphCheck:
    cases = [{"latent": latent} for latent in _raw_latents(components, generator)]
    return _compare("vae_decoder", open_session(path), VAEDecoderGraph(components.vae), cases)


def _stage_geometry(latent_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(channels, scale) if ``out_shape`` is [B, channels, h * scale, w * scale] for ``latent_shape`` [B, C, h, w]."""
    batch, _, height, width = latent_shape
    out_batch, channels, out_height, out_width = out_shape
    scale = out_height // height
    return (channels, scale) if (out_batch, out_height, out_width) == (batch, height * scale, width * scale) else None


def verify_vae_stages(components: Components, decoder_path: Path, stage_paths: list[Path],
                      seed: int = 0) -> StagesCheck:
    """Chain the stage graphs on seeded raw latents and compare with vae_decoder.onnx; raise VerificationError if
    the image is off, a stage's geometry is not one (channels, scale) for every latent, or the last stage does not
    output [B, 3, h * vae_scale_factor, w * vae_scale_factor]."""
    generator = np.random.default_rng(seed)
    for path in stage_paths:
        check_onnx_file(path)
    decoder, stages = open_session(decoder_path), [open_session(path) for path in stage_paths]
    max_diff, max_ref, shapes, geometries = 0.0, 0.0, [], set()
    for latent in _raw_latents(components, generator):
        hidden, per_stage = latent, []
        for stage in stages:
            (hidden,) = stage.run(None, {VAE_STAGE_INPUT: hidden})
            per_stage.append(_stage_geometry(latent.shape, hidden.shape))
        (image,) = decoder.run(None, {"latent": latent})
        if hidden.shape != image.shape:
            raise VerificationError(f"vae_stages: stitched shape {hidden.shape} != vae_decoder shape {image.shape}")
        max_diff = max(max_diff, float(np.max(np.abs(hidden - image))))
        max_ref = max(max_ref, float(np.max(np.abs(image))))
        shapes.append("x".join(str(d) for d in latent.shape))
        geometries.add(tuple(per_stage))
    geometry = next(iter(geometries))
    if len(geometries) != 1 or None in geometry or geometry[-1] != (3, components.vae_scale_factor):
        raise VerificationError(f"vae_stages: stage outputs are not [B, c_k, h * s_k, w * s_k] with one (c_k, s_k) "
                                f"per stage ending in (3, {components.vae_scale_factor}): {list(geometries)}")
    channels, scales = zip(*geometry)
    check = StagesCheck("vae_stages", max_diff, max_ref, RELATIVE_TOLERANCE * max(1.0, max_ref), tuple(shapes),
                        channels, scales)
    if not check.passed:
        raise VerificationError(f"VAE stages disagree with the full decoder: {check.describe()}")
    return check


def check_onnx_file(path: Path) -> None:
    """onnx.checker on the file (by path, so graphs with external data over 2 GB work too)."""
    onnx.checker.check_model(str(path))


def verify_exports(components: Components, paths: dict[str, Path], seed: int = 0) -> list[GraphCheck]:
    """Check every exported graph; raise VerificationError if one is off. Returns the per-graph results."""
    generator = np.random.default_rng(seed)
    checkers = {"text_encoder": check_text_encoder, "unet": check_unet, "vae_decoder": check_vae_decoder}
    results = []
    for graph, checker in checkers.items():
        check_onnx_file(paths[graph])
        results.append(checker(components, paths[graph], generator))
    failed = [r.describe() for r in results if not r.passed]
    if failed:
        raise VerificationError("ONNX Runtime disagrees with torch: " + "; ".join(failed))
    return results
