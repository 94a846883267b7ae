"""Every bound the server enforces, in one place.

`Limits` is immutable and built once at start-up from the exported model's manifest (sizes) and the
serving configuration (queue and batch bounds). The validator and the engine read nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from scheduler_backend.vae_chunks import StageShapes


def read_manifest(model_dir: Path | str) -> dict[str, Any]:
    """The exported model directory's manifest.json (docs/interfaces.md)."""
    return json.loads((Path(model_dir) / "manifest.json").read_text())


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of the exported models that requests must agree with (from manifest.json)."""

    latent_channels: int
    vae_scale_factor: int
    text_max_length: int
    text_hidden_size: int
    size_multiple: int
    default_size: int
    max_size: int
    vae_stages: StageShapes | None = None  # the decoder's stage graphs, when the export has them

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ModelSpec:
        text = manifest["text"]
        stages = manifest.get("vae_stages")
        return cls(
            latent_channels=int(manifest["latent_channels"]),
            vae_scale_factor=int(manifest["vae_scale_factor"]),
            text_max_length=int(text["max_length"]),
            text_hidden_size=int(text["hidden_size"]),
            size_multiple=int(manifest["size_multiple"]),
            default_size=int(manifest["default_size"]),
            max_size=int(manifest["max_size"]),
            vae_stages=(StageShapes(tuple(int(c) for c in stages["channels"]),
                                    tuple(int(s) for s in stages["scales"])) if stages else None),
        )

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)


@dataclass(frozen=True)
class Limits:
    """Request bounds (validated at the boundary) and serving bounds (enforced by the engine)."""

    model: ModelSpec
    max_prompt_chars: int = 2000
    max_steps: int = 150
    default_steps: int = 20
    max_guidance_scale: float = 30.0
    default_guidance_scale: float = 7.5
    max_seed: int = 2**63 - 1
    # Serving bounds: requests waiting to join the batch, and requests denoising at once.
    max_waiting_requests: int = 64
    max_running_requests: int = 16
    # How long a request may wait to join the batch before it gets UNAVAILABLE (None: as long as it takes).
    # A request may ask for less (the `queue_timeout_ms` request parameter), never for more.
    queue_timeout_s: float | None = None
    max_request_id_chars: int = 256

    @classmethod
    def from_model_dir(cls, model_dir: Path | str, **serving: Any) -> Limits:
        """The limits of the exported model in `model_dir`, with the serving bounds given (else the defaults)."""
        return cls(ModelSpec.from_manifest(read_manifest(model_dir)), **serving)

    def internal_call_elements(self) -> dict[str, int]:
        """The most input values the engine ever sends an internal model in one call, by model. The internal
        models refuse more, so a client calling them directly cannot go past the request limits.

        UNet: 2 rows (with CFG) per running request at the largest latent; text encoder: one request's two token
        rows; VAE decoder: every running request's latent, times 4 for tiles (their overlaps); a VAE stage: the
        largest stage input (the latent, or the previous stage's output) for every running request.
        """
        spec, running = self.model, self.max_running_requests
        side = spec.max_size // spec.vae_scale_factor
        latent = spec.latent_channels * side * side
        rows = 2 * running
        stage_inputs = [latent]
        if spec.vae_stages is not None:
            stage_inputs += [channels * (side * scale) ** 2
                             for channels, scale in zip(spec.vae_stages.channels[:-1], spec.vae_stages.scales[:-1])]
        return {
            "unet": rows * (latent + 1 + spec.text_max_length * spec.text_hidden_size),
            "text_encoder": 2 * spec.text_max_length,
            "vae_decoder": 4 * running * latent,
            "vae_stages": running * max(stage_inputs) + 1,
        }

    def __post_init__(self) -> None:
        if self.max_waiting_requests < 1 or self.max_running_requests < 1:
            raise ValueError("max_waiting_requests and max_running_requests must be >= 1")
        if self.queue_timeout_s is not None and not self.queue_timeout_s > 0:
            raise ValueError("queue_timeout_s must be > 0 (or None for no timeout)")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError("default_steps must lie in [1, max_steps]")
