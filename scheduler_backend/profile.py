"""The latency profile: what the models cost on this machine, as the planner and the simulator see it.

Written by the offline profiler (`perf/profile.py`, `synerdiff profile`) as JSON next to the model, read
at start-up. Everything is measured at one reference latent size (`latent_hw`); costs of other sizes scale
with the latent area (the models are convolutional and their cost is linear in pixels to first order).

Contention is a pair of slowdown factors per VAE chunk kind, measured by running a UNet call and a VAE
chunk at the same time: while both run, the UNet progresses at 1/unet_slowdown of its solo rate and the
chunk at 1/vae_slowdown of its own (a fluid model, `overlap`). The JSON schema is in docs/design.md §4.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Contention:
    unet_slowdown: float = 1.0
    vae_slowdown: float = 1.0

    def __post_init__(self) -> None:
        if self.unet_slowdown < 1.0 or self.vae_slowdown < 1.0:
            raise ValueError("slowdown factors are >= 1")


@dataclass(frozen=True)
class LatencyProfile:
    latent_hw: tuple[int, int]
    unet_rows: tuple[int, ...]  # ascending batch sizes (rows) that were measured
    unet_seconds: tuple[float, ...]  # one UNet call of that many rows
    vae_chunk_seconds: Mapping[str, float]  # chunk kind ("whole", "stage0", ..., "tile") -> seconds per image
    contention: Mapping[str, Contention] = field(default_factory=dict)  # per chunk kind
    per_call_overhead_s: float = 0.0  # serving overhead added to every model call (BLS, copies)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # machine, model, tiling, how measured

    def __post_init__(self) -> None:
        if not self.unet_rows or len(self.unet_rows) != len(self.unet_seconds):
            raise ValueError("unet rows and seconds must be non-empty and of equal length")
        if list(self.unet_rows) != sorted(set(self.unet_rows)) or self.unet_rows[0] < 1:
            raise ValueError("unet rows must be ascending, distinct and >= 1")
        if any(s <= 0 for s in self.unet_seconds) or any(s <= 0 for s in self.vae_chunk_seconds.values()):
            raise ValueError("latencies must be positive")

    # -- UNet ---------------------------------------------------------------------------------------

    @property
    def max_rows(self) -> int:
        return self.unet_rows[-1]

    def unet_call_seconds(self, rows: float, area_ratio: float = 1.0) -> float:
        """One UNet call of `rows` rows: piecewise linear between measured sizes, linear beyond the last."""
        if rows <= 0:
            return 0.0
        xs, ys = self.unet_rows, self.unet_seconds
        if rows <= xs[0]:
            seconds = ys[0]
        elif len(xs) == 1:
            seconds = ys[0] * rows / xs[0]
        else:
            i = min(max(bisect_left(xs, rows), 1), len(xs) - 1)
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            seconds = y0 + (y1 - y0) * (rows - x0) / (x1 - x0)
        return seconds * area_ratio + self.per_call_overhead_s

    def rows_per_second(self, rows: int) -> float:
        return rows / self.unet_call_seconds(rows)

    @property
    def peak_rows_per_second(self) -> float:
        return max(self.rows_per_second(rows) for rows in self.unet_rows)

    def threshold_rows(self, threshold: float) -> int:
        """The smallest measured batch whose throughput reaches `threshold` x peak (the batch threshold)."""
        target = threshold * self.peak_rows_per_second
        return next((rows for rows in self.unet_rows if self.rows_per_second(rows) >= target - 1e-12),
                    self.max_rows)

    # -- VAE ----------------------------------------------------------------------------------------

    def chunk_seconds(self, kind: str, area_ratio: float = 1.0) -> float:
        try:
            return self.vae_chunk_seconds[kind] * area_ratio + self.per_call_overhead_s
        except KeyError:
            raise KeyError(f"the latency profile has no VAE chunk kind {kind!r}; "
                           f"it has {', '.join(sorted(self.vae_chunk_seconds))} (re-run the profiler)") from None

    def decode_seconds(self, area_ratio: float = 1.0) -> float:
        """One image's whole decode: measured as such, or the sum of its stages."""
        if "whole" in self.vae_chunk_seconds:
            return self.chunk_seconds("whole", area_ratio)
        return sum(self.chunk_seconds(kind, area_ratio) for kind in self.vae_chunk_seconds if kind.startswith("stage"))

    def contention_for(self, kind: str) -> Contention:
        return self.contention.get(kind) or self.contention.get("*") or Contention()

    def worst_contention(self, kinds: Iterable[str]) -> Contention:
        """The largest slowdowns over chunk kinds run in one lane (none: no contention)."""
        factors = [self.contention_for(kind) for kind in kinds] or [Contention()]
        return Contention(max(c.unet_slowdown for c in factors), max(c.vae_slowdown for c in factors))

    def area_ratio(self, latent_hw: Sequence[int]) -> float:
        return (latent_hw[0] * latent_hw[1]) / (self.latent_hw[0] * self.latent_hw[1])

    # -- JSON ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "latent_hw": list(self.latent_hw),
            "unet": {"rows": list(self.unet_rows), "seconds": list(self.unet_seconds)},
            "vae_chunks": dict(self.vae_chunk_seconds),
            "contention": {kind: {"unet_slowdown": c.unet_slowdown, "vae_slowdown": c.vae_slowdown}
                           for kind, c in self.contention.items()},
            "per_call_overhead_s": self.per_call_overhead_s,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyProfile:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"latency profile schema {data.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                             f"re-run the profiler")
        return cls(
            latent_hw=(int(data["latent_hw"][0]), int(data["latent_hw"][1])),
            unet_rows=tuple(int(r) for r in data["unet"]["rows"]),
            unet_seconds=tuple(float(s) for s in data["unet"]["seconds"]),
            vae_chunk_seconds={str(k): float(v) for k, v in data["vae_chunks"].items()},
            contention={str(k): Contention(float(v["unet_slowdown"]), float(v["vae_slowdown"]))
                        for k, v in data.get("contention", {}).items()},
            per_call_overhead_s=float(data.get("per_call_overhead_s", 0.0)),
            metadata=dict(data.get("metadata", {})),
        )

    @classmethod
    def load(cls, path: Path | str) -> LatencyProfile:
        return cls.from_json(json.loads(Path(path).read_text()))

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        temporary.replace(path)


def overlap(unet_s: float, vae_s: float, contention: Contention) -> tuple[float, float]:
    """(UNet end, VAE end) when a UNet call of `unet_s` solo seconds and VAE work of `vae_s` solo seconds
    start together: both run slowed until the first ends, the other then runs alone."""
    if unet_s <= 0 or vae_s <= 0:
        return max(unet_s, 0.0), max(vae_s, 0.0)
    unet_shared, vae_shared = unet_s * contention.unet_slowdown, vae_s * contention.vae_slowdown
    if unet_shared <= vae_shared:
        return unet_shared, unet_shared + (vae_s - unet_shared / contention.vae_slowdown)
    return vae_shared + (unet_s - vae_shared / contention.unet_slowdown), vae_shared
