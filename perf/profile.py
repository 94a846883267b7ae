"""The offline profiler: measures a `LatencyProfile` of one exported model on this machine (`synerdiff profile`).

Everything runs in-process at the manifest's default latent size (default_size // vae_scale_factor), under a
runtime (perf/runtimes.py): ONNX Runtime in sessions made as the `cpu` target's models make them (the default), or
the torch modules as `cpu-torch` / `gpu-torch` run them (`torch:cpu`, `torch:cuda`), so the costs are those the
server's model instances see:
- UNet: one call per measured row count (sample [R, C, h, w], a distinct timestep per row, text [R, 77, D]);
- VAE chunks, per image: "whole" (vae_decoder on the full latent), "stage<k>" (the manifest's "vae_stages"
  graphs, each fed the previous stage's real output; absent from older exports) and "tile" (vae_decoder on
  one tile of `tile_grid` with `tile_overlap`, scheduler_backend.vae_chunks.tile_windows);
- contention per chunk kind: the UNet at the threshold batch and the chunk, each looping on its own thread
  and runner at once (ORT and torch release the GIL; the server runs them in separate processes).

Invariants: a latency is the median of `repeats` calls after `warmups` unmeasured ones at the same shape;
contention factors are >= 1 (noise can make a concurrent call look faster than alone); a saved profile
lives at profile_path(), keyed by machine, runtime and thread counts, and records the sha256 of the manifest it
measured: ensure_profile() reuses it only for that same manifest.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from export.layout import MANIFEST_FILE
from export.render import ServingSettings
from perf.runtimes import Call, Runner, runner, runners, runtime_facts
from scheduler_backend.profile import Contention, LatencyProfile
from scheduler_backend.vae_chunks import ChunkingSpec, StageShapes, VaeJob, Window, tile_windows

DEFAULT_ROWS = (1, 2, 3, 4, 6, 8, 12, 16)
THRESHOLD = 0.9  # contention is measured with the UNet at the smallest batch reaching this share of peak rows/s
CONTENTION_MIN_CALLS = 3  # under contention, each side completes at least this many calls ...
CONTENTION_MIN_WINDOW_S = 0.3  # ... and the loops run together at least this long, ...
CONTENTION_MAX_WINDOW_S = 3.0  # ... or, past this, at least one call each (bounds the time for slow calls)
POLL_S = 0.002
PROFILES_DIR = "profiles"

Log = Callable[[str], None]


# -- machine and model identity --------------------------------------------------------------------------


def machine_facts(unet_threads: int, vae_threads: int, runtime: str = "onnx") -> dict[str, Any]:
    """What a profile's numbers depend on besides the model: the machine, the runtime and the thread counts."""
    return {**runtime_facts(runtime), "unet_threads": unet_threads, "vae_threads": vae_threads}


def machine_key(unet_threads: int, vae_threads: int, runtime: str = "onnx") -> str:
    """12 hex digits, the same for the same machine facts (stable across processes and runs)."""
    facts = json.dumps(machine_facts(unet_threads, vae_threads, runtime), sort_keys=True)
    return hashlib.sha256(facts.encode()).hexdigest()[:12]


def manifest_sha256(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()


def profile_path(model_dir: Path | str, unet_threads: int = ServingSettings.unet_threads,
                 vae_threads: int = ServingSettings.vae_threads, runtime: str = "onnx") -> Path:
    return Path(model_dir) / PROFILES_DIR / f"{machine_key(unet_threads, vae_threads, runtime)}.json"


# -- timing ----------------------------------------------------------------------------------------------


def timed(call: Call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def median_seconds(call: Call, repeats: int, warmups: int) -> float:
    for _ in range(warmups):
        call()
    return statistics.median(timed(call) for _ in range(repeats))


def concurrent_mean_seconds(calls: Sequence[Call]) -> list[float]:
    """Each call's mean latency while all of them loop at once, each on its own thread.

    The loops start together and run until each has completed CONTENTION_MIN_CALLS calls and
    CONTENTION_MIN_WINDOW_S has passed, or one call each once CONTENTION_MAX_WINDOW_S has passed; only calls
    that ended before that stop count, so every counted call ran entirely while all the other loops were
    running too."""
    stop, start = threading.Event(), threading.Barrier(len(calls))
    records: list[list[tuple[float, float]]] = [[] for _ in calls]  # (ended at, seconds) per loop

    def loop(call: Call, record: list[tuple[float, float]]) -> None:
        start.wait()
        while not stop.is_set():
            began = time.perf_counter()
            call()
            ended = time.perf_counter()
            record.append((ended, ended - began))

    def enough(elapsed_s: float) -> bool:
        fewest = min(len(record) for record in records)
        return ((elapsed_s >= CONTENTION_MIN_WINDOW_S and fewest >= CONTENTION_MIN_CALLS)
                or (elapsed_s >= CONTENTION_MAX_WINDOW_S and fewest >= 1))

    with ThreadPoolExecutor(len(calls)) as pool:
        began = time.perf_counter()
        futures = [pool.submit(loop, call, record) for call, record in zip(calls, records)]
        while not any(future.done() for future in futures) and not enough(time.perf_counter() - began):
            time.sleep(POLL_S)
        stopped_at = time.perf_counter()
        stop.set()
        for future in futures:
            future.result()  # re-raises a failed call's error
    return [statistics.fmean(seconds for ended, seconds in record if ended <= stopped_at) for record in records]


def contention(unet: Call, unet_solo_s: float, chunk: Call, chunk_solo_s: float) -> Contention:
    unet_s, chunk_s = concurrent_mean_seconds([unet, chunk])
    return Contention(unet_slowdown=max(1.0, unet_s / unet_solo_s), vae_slowdown=max(1.0, chunk_s / chunk_solo_s))


# -- the calls that are measured -------------------------------------------------------------------------


def unet_inputs(manifest: Mapping[str, Any], rows: int, latent_hw: tuple[int, int],
                rng: np.random.Generator) -> list[np.ndarray]:
    """A UNet call's inputs: sample [R, C, h, w], a distinct timestep per row, text [R, 77, D]."""
    text = manifest["text"]
    return [rng.standard_normal((rows, manifest["latent_channels"], *latent_hw), dtype=np.float32),
            np.linspace(999, 1, rows, dtype=np.float32),
            rng.standard_normal((rows, text["max_length"], text["hidden_size"]), dtype=np.float32)]


def stage_calls(stages: Sequence[Runner], manifest: Mapping[str, Any], latent: np.ndarray) -> dict[str, Call]:
    """"stage<k>" -> a call of stage k on stage k-1's real output for `latent` [C, h, w] (stage 0 on the latent).
    Each stage runs once here (checking its output shape); none without stages."""
    if not stages:
        return {}
    vae_stages = manifest["vae_stages"]
    job = VaeJob(latent, ChunkingSpec("stages"), manifest["vae_scale_factor"],
                 StageShapes(tuple(vae_stages["channels"]), tuple(vae_stages["scales"])))
    calls: dict[str, Call] = {}
    for stage in stages:
        kind, inputs = job.next_chunk.kind, [job.chunk_input()[None]]
        calls[kind] = stage.bind(inputs)
        job.complete(stage(inputs)[0])
    return calls


def vae_chunk_calls(runtime: str, model_dir: Path, manifest: Mapping[str, Any], latent_hw: tuple[int, int],
                    threads: int, tile: Window, rng: np.random.Generator) -> dict[str, Call]:
    """Chunk kind -> a call decoding one image's chunk: "whole", "stage<k>"... (when the export has "vae_stages"),
    "tile" (on the latent window `tile`)."""
    latent = rng.standard_normal((manifest["latent_channels"], *latent_hw), dtype=np.float32)
    decoder = runner(runtime, model_dir, manifest, "vae_decoder", threads)
    stages = runners(runtime, model_dir, manifest, "vae_stages", threads) if manifest.get("vae_stages") else []
    y0, y1, x0, x1 = tile
    return {"whole": decoder.bind([latent[None]]),
            **stage_calls(stages, manifest, latent),
            "tile": decoder.bind([np.ascontiguousarray(latent[None, :, y0:y1, x0:x1])])}


# -- the profile -----------------------------------------------------------------------------------------


def measure_profile(model_dir: Path | str, *, unet_threads: int = ServingSettings.unet_threads,
                    vae_threads: int = ServingSettings.vae_threads, rows: Sequence[int] = DEFAULT_ROWS,
                    tile_grid: tuple[int, int] = (2, 2), tile_overlap: int = 4, repeats: int = 3, warmups: int = 1,
                    runtime: str = "onnx", log: Log = print) -> LatencyProfile:
    """Measures the profile of the export in `model_dir` (see the module docstring for what and how)."""
    started = time.perf_counter()
    model_dir = Path(model_dir).resolve()
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    side = manifest["default_size"] // manifest["vae_scale_factor"]
    latent_hw = (side, side)
    rng = np.random.default_rng(0)
    row_counts = tuple(sorted(set(rows)))

    unet = runner(runtime, model_dir, manifest, "unet", unet_threads)
    unet_calls = {r: unet.bind(unet_inputs(manifest, r, latent_hw, rng)) for r in row_counts}
    unet_seconds = tuple(median_seconds(unet_calls[r], repeats, warmups) for r in row_counts)
    for r, seconds in zip(row_counts, unet_seconds):
        log(f"profile: unet batch {r}: {seconds * 1e3:.1f} ms")
    threshold = LatencyProfile(latent_hw, row_counts, unet_seconds, {}).threshold_rows(THRESHOLD)

    tile = tile_windows(latent_hw, tile_grid, tile_overlap)[0]  # all windows of a grid have the same size
    chunks = vae_chunk_calls(runtime, model_dir, manifest, latent_hw, vae_threads, tile, rng)
    chunk_seconds = {kind: median_seconds(call, repeats, warmups) for kind, call in chunks.items()}
    contentions = {}
    for kind, call in chunks.items():
        contentions[kind] = contention(unet_calls[threshold], unet_seconds[row_counts.index(threshold)],
                                       call, chunk_seconds[kind])
        log(f"profile: vae {kind}: {chunk_seconds[kind] * 1e3:.1f} ms; with a unet call of batch {threshold}: "
            f"unet x{contentions[kind].unet_slowdown:.2f}, vae x{contentions[kind].vae_slowdown:.2f}")

    metadata = {
        "machine": machine_facts(unet_threads, vae_threads, runtime),
        "model": {"dir": str(model_dir), "preset": manifest["preset"], "manifest_sha256": manifest_sha256(model_dir)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiling": {"grid": list(tile_grid), "overlap": tile_overlap,
                   "tile_latent_hw": [tile[1] - tile[0], tile[3] - tile[2]]},
        "repeats": repeats, "warmups": warmups,
        "contention_rows": threshold,
        "profiling_seconds": round(time.perf_counter() - started, 2),
    }
    return LatencyProfile(latent_hw, row_counts, unet_seconds, chunk_seconds, contentions, metadata=metadata)


def load_profile(path: Path | str) -> LatencyProfile:
    return LatencyProfile.load(path)


def _measured_on(path: Path, manifest_sha: str) -> bool:
    """True if `path` holds a readable profile measured on the manifest whose sha256 is `manifest_sha`."""
    try:
        profile = load_profile(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return profile.metadata.get("model", {}).get("manifest_sha256") == manifest_sha


def ensure_profile(model_dir: Path | str, *, unet_threads: int = ServingSettings.unet_threads,
                   vae_threads: int = ServingSettings.vae_threads, runtime: str = "onnx", force: bool = False,
                   log: Log = print, **measure_options: Any) -> Path:
    """The profile file for `model_dir`, this runtime and these thread counts: reused when it exists and was measured
    on the current manifest (unless `force`), else measured (`measure_options` go to measure_profile) and saved
    atomically."""
    model_dir = Path(model_dir).resolve()
    path = profile_path(model_dir, unet_threads, vae_threads, runtime)
    if not force and _measured_on(path, manifest_sha256(model_dir)):
        log(f"profile: reusing {path}")
        return path
    log(f"profile: measuring {model_dir} with {runtime} (unet {unet_threads} threads, vae {vae_threads} threads)")
    profile = measure_profile(model_dir, unet_threads=unet_threads, vae_threads=vae_threads, runtime=runtime,
                              log=log, **measure_options)
    profile.save(path)
    log(f"profile: wrote {path} in {profile.metadata['profiling_seconds']:.1f} s")
    return path
