"""The plots of `synerdiff bench compare` (matplotlib, Agg backend, PNG), written next to results.md.

* `latency-cdf-<arrivals>.png`: each policy's end-to-end latency CDF at the highest load where every policy
  served every request (the lowest load when there is none), pooled over repetitions;
* `p99-vs-load.png`: P99 latency against offered load, one panel per arrival pattern, with the SLO;
* `throughput-vs-load.png`: achieved img/s against offered img/s, one panel per arrival pattern, with the
  hardware bound and the line achieved = offered.

Invariant: a policy with no image at a load has no latency point there (never one at 0 s or NaN).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from perf.report import Bounds, LatencySummary  # noqa: E402

Cell = tuple[str, str, float]  # (policy, arrival pattern, load)


def cdf_load(policies: Sequence[str], kind: str, loads: Sequence[float],
             summaries: Mapping[Cell, LatencySummary]) -> float:
    """The highest load at which every policy served every request of `kind`; the lowest load if none did."""
    served = [load for load in loads if all(summaries[(p, kind, load)].all_served for p in policies)]
    return max(served) if served else min(loads)


def latency_cdf(path: Path, latencies: Mapping[str, Sequence[float]], title: str) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for policy, values in latencies.items():
        if values:
            xs = np.sort(np.asarray(values))
            axes.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=policy)
    axes.set(xlabel="end-to-end latency (s)", ylabel="fraction of requests", title=title, ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def per_load(path: Path, policies: Sequence[str], kinds: Sequence[str], loads: Sequence[float],
             value: Mapping[Cell, float], ylabel: str, xscale: float, xlabel: str,
             guides: Sequence[tuple[str, float]] = (), diagonal: bool = False) -> Path:
    """One panel per arrival pattern: `value` of each policy against load x `xscale`; `guides` are labelled
    horizontal lines, `diagonal` draws y = x."""
    figure, panels = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for axes, kind in zip(panels[0], kinds):
        for policy in policies:
            points = [(load * xscale, value[(policy, kind, load)]) for load in loads
                      if math.isfinite(value[(policy, kind, load)])]
            if points:
                axes.plot(*zip(*points), marker="o", label=policy)
        for label, level in guides:
            axes.axhline(level, linestyle="--", color="grey", linewidth=1)
            axes.annotate(label, (0.01, level), xycoords=("axes fraction", "data"), fontsize="small",
                          color="grey", va="bottom")
        if diagonal:
            top = max(loads) * xscale
            axes.plot([0, top], [0, top], linestyle=":", color="grey", linewidth=1)
        axes.set(xlabel=xlabel, ylabel=ylabel, title=kind)
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def write_plots(out: Path, policies: Sequence[str], kinds: Sequence[str], loads: Sequence[float], bounds: Bounds,
                summaries: Mapping[Cell, LatencySummary],
                latencies: Mapping[Cell, Sequence[float]]) -> list[Path]:
    """Writes every plot of the module docstring into `out`; returns their paths."""
    paths = []
    for kind in kinds:
        load = cdf_load(policies, kind, loads, summaries)
        paths.append(latency_cdf(out / f"latency-cdf-{kind}.png",
                                 {p: latencies[(p, kind, load)] for p in policies},
                                 f"latency CDF, {kind} arrivals at {load:.0%} of the bound"))
    offered = f"offered load (img/s; bound {bounds.throughput_per_s:.3f})"
    paths.append(per_load(out / "p99-vs-load.png", policies, kinds, loads,
                          {cell: s.p99_s for cell, s in summaries.items()}, "P99 latency (s)",
                          bounds.throughput_per_s, offered, [(f"SLO {bounds.slo_s:.1f} s", bounds.slo_s)]))
    paths.append(per_load(out / "throughput-vs-load.png", policies, kinds, loads,
                          {cell: s.throughput_per_s for cell, s in summaries.items()}, "achieved img/s",
                          bounds.throughput_per_s, offered,
                          [(f"hardware bound {bounds.throughput_per_s:.3f}", bounds.throughput_per_s)],
                          diagonal=True))
    return paths


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
