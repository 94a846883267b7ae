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

    def __post_init__(self) -> None:
        if self.max_waiting_requests < 1 or self.max_running_requests < 1:
            raise ValueError("max_waiting_requests and max_running_requests must be >= 1")
        if self.queue_timeout_s is not None and not self.queue_timeout_s > 0:
            raise ValueError("queue_timeout_s must be > 0 (or None for no timeout)")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError("default_steps must lie in [1, max_steps]")
