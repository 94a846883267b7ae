"""Post-export checks: onnx.checker, then ONNX Runtime (CPU) against torch on a few shapes per graph.

Shapes cover what the exported graphs promise beyond the traced example: a batch of 1 and a batch of 3 (UNet,
with three different timesteps, one of them fractional as Euler uses), a batch of 2 and a non-square latent
(UNet and VAE). Tolerance: ``max |ORT - torch| <= RELATIVE_TOLERANCE * max(1, max |torch|)``, i.e. 1e-3 for
outputs of magnitude ~1, scaled up for larger outputs (random-weight VAEs reach |x| ~ 5). Measured differences
are ~1e-6 (UNet) to ~1e-5 (VAE); anything near the tolerance means a broken graph, not float noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.components import Components
from export.errors import VerificationError
from export.layout import TEXT_MAX_LENGTH
from export.onnx_export import TextEncoderGraph, UNetGraph, VAEDecoderGraph, example_latent_side

RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class GraphCheck:
    """Result of comparing one ONNX graph with its torch module."""

    graph: str
    max_abs_diff: float
    max_abs_reference: float
    tolerance: float
    shapes: tuple[str, ...]  # the input shapes that were compared

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        return (f"{self.graph}: max |ORT - torch| = {self.max_abs_diff:.2e} (max |torch| = "
                f"{self.max_abs_reference:.2f}, tolerance {self.tolerance:.1e}; {', '.join(self.shapes)})")


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


def check_vae_decoder(components: Components, path: Path, generator: np.random.Generator) -> GraphCheck:
    side = example_latent_side(components)
    channels = components.latent_channels
    scale = float(components.vae.config.scaling_factor)  # raw latents are ~N(0, scale^2)
    cases = [{"latent": scale * generator.standard_normal((batch, channels, height, width), dtype=np.float32)}
             for batch, height, width in ((1, side, side), (2, *_non_square_latent(components)))]
    return _compare("vae_decoder", open_session(path), VAEDecoderGraph(components.vae), cases)


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
