"""Image-quality cost of the two approximate SynerDiff mechanisms, measured on a real export in-process.

    python -m perf.quality tiles    --model-dir build/models/bench
    python -m perf.quality skip-cfg --model-dir build/models/bench

Both print Markdown tables (and write them to --out when given). Models run through `OrtExecutor`
(perf/local_executor.py) with the server's ORT session options.

* ``tiles``: VAE tiling (`ChunkingSpec("tiles", grid, overlap)`, decoded through a `VaeJob` as the engine decodes)
  against the whole decode of the same raw latent, for seeded unit-variance random latents and for latents
  the engine really denoised (sequential policy). max |Δ| and mean |Δ| are in the decoder's output units
  (about [-1, 1]); PSNR is of the uint8 images (`engine.to_uint8_images`). A `stages` row checks that stage
  chunking is exact.
* ``skip-cfg``: each request runs alone through the real `Engine` twice with the same seed: Skip-CFG off, and
  Skip-CFG at its maximum (every step the `SkipCfgPolicy` allows skips: `MaxSkipPlanner` asks every step and
  the engine keeps only eligible ones). Differences are of the uint8 images; for scale, the same numbers
  between two seeds of one prompt (a different image) and between guidance 7.5 and 7.0 without skipping
  (a small guidance change).

The exported presets have random (seeded) weights: these numbers measure how far a mechanism moves the
output of this pipeline, not how good an image looks.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from perf.local_executor import OrtExecutor
from scheduler_backend.engine import Engine, RequestFinished, to_uint8_images
from scheduler_backend.planner import SchedulerView, StepPlan, UnetCall, VaeCall
from scheduler_backend.policies import make_policy
from scheduler_backend.request import GenerationParams, PromptPair
from scheduler_backend.sampler import SamplerKind
from scheduler_backend.skip_cfg import SkipCfgPolicy
from scheduler_backend.vae_chunks import ChunkingSpec, tile_windows

PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse at dusk",
    "a bowl of ramen on a wooden table, studio lighting",
    "a red fox in a snowy forest, highly detailed",
    "an isometric illustration of a tiny city",
    "a portrait of an old sailor, oil on canvas",
    "a futuristic car parked under neon lights",
    "a field of sunflowers under a stormy sky",
)
GUIDANCE = 7.5
REFERENCE_GUIDANCE = 7.0
WEIGHTS_NOTE = ("Weights are random (seeded export presets): this measures consistency with the exact "
                "computation, not image fidelity.")

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- metrics --------------------------------------------------------------------------------------------


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0 ** 2 / mse)


@dataclass(frozen=True)
class Diff:
    max_abs: float
    mean_abs: float
    psnr_db: float  # of the uint8 images

    @classmethod
    def between(cls, a: np.ndarray, b: np.ndarray, uint8: bool = False) -> Diff:
        """Two float decoder outputs [3, H, W] (their uint8 images give the PSNR), or two uint8 images."""
        if uint8:
            image_a, image_b = a, b
        else:
            image_a, image_b = to_uint8_images(a[None])[0], to_uint8_images(b[None])[0]
        delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return cls(float(delta.max()), float(delta.mean()), psnr_db(image_a, image_b))


def _num(value: float, digits: int = 4) -> str:
    if math.isinf(value):
        return "inf"
    if value == 0.0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- running requests through the engine ----------------------------------------------------------------


@dataclass(frozen=True)
class MaxSkipPlanner:
    """One request at a time, start to finish (as `SequentialPlanner`); with `skip`, every UNet call lists its
    request in `skip_cfg`, and the engine keeps only the steps its `SkipCfgPolicy` allows: maximum Skip-CFG."""

    skip: bool = True

    def plan(self, view: SchedulerView) -> StepPlan:
        if view.vae_jobs:
            return StepPlan(vae_after=(VaeCall((view.vae_jobs[0].request_id,)),))
        admit: tuple[str, ...] = ()
        if view.denoising:
            request_id = view.denoising[0].request_id
        elif view.waiting:
            request_id = view.waiting[0].request_id
            admit = (request_id,)
        else:
            return StepPlan()
        return StepPlan(admit=admit, unet_calls=(UnetCall((request_id,), (request_id,) if self.skip else ()),))


@dataclass(frozen=True)
class Generated:
    image: np.ndarray  # [H, W, 3] uint8
    skipped_steps: int


async def run_engine(engine: Engine, requests: Sequence[tuple[GenerationParams, np.ndarray]]) -> list[Generated]:
    """Add the requests, step the engine until it is empty; their images in order, with their skipped steps.

    The planner must finish requests one at a time, in order (sequential, `MaxSkipPlanner`): an iteration's
    skipped rows are counted for the first request not finished yet."""
    ids = [f"q{i}" for i in range(len(requests))]
    for request_id, (params, embeddings) in zip(ids, requests):
        engine.add(request_id, params, embeddings)
    images: dict[str, np.ndarray] = {}
    skipped = dict.fromkeys(ids, 0)
    while engine.has_work:
        current = next(i for i in ids if i not in images)
        report = await engine.step()
        skipped[current] += report.skipped_cfg_rows
        for event in report.events:
            if isinstance(event, RequestFinished):
                if event.image is None:
                    raise RuntimeError(f"request {event.request_id} failed: {event.error}")
                images[event.request_id] = event.image
    return [Generated(images[i], skipped[i]) for i in ids]


def params_for(executor: OrtExecutor, prompt: str, *, seed: int, steps: int, sampler: SamplerKind,
               guidance: float = GUIDANCE, size: int | None = None) -> GenerationParams:
    side = size or executor.spec.default_size
    return GenerationParams(prompts=PromptPair(prompt, ""), num_steps=steps, guidance_scale=guidance, seed=seed,
                            height=side, width=side, sampler=sampler, progress=False)


async def generate(executor: OrtExecutor, params: GenerationParams, embeddings: np.ndarray, *,
                   skip_cfg: SkipCfgPolicy | None) -> Generated:
    """One request alone through the engine; `skip_cfg` None: no Skip-CFG, else the maximum that policy allows."""
    engine = Engine(executor, MaxSkipPlanner(skip=skip_cfg is not None), executor.limits(), executor.schedule(),
                    skip_cfg=skip_cfg)
    return (await run_engine(engine, [(params, embeddings)]))[0]


@dataclass
class RecordingExecutor:
    """Delegates to an `OrtExecutor` and keeps every raw latent `run_vae` was given (whole decodes)."""

    inner: OrtExecutor
    latents: list[np.ndarray] = field(default_factory=list)

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        return await self.inner.run_unet(samples, timesteps, text_embeddings)

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        self.latents += [latent.copy() for latent in latents]
        return await self.inner.run_vae(latents)

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        return await self.inner.run_vae_stage(stage, hidden)


async def denoised_latents(executor: OrtExecutor, count: int, steps: int = 20, size: int | None = None) -> list[np.ndarray]:
    """Raw final latents (the VAE's input) of `count` prompts denoised by the engine under the sequential policy
    (DDIM, guidance 7.5, seeds 0..count-1)."""
    recorder = RecordingExecutor(executor)
    limits = executor.limits()
    policy = make_policy("sequential", limits)
    engine = Engine(recorder, policy.planner, limits, executor.schedule(), chunking=policy.chunking)
    requests = [(params_for(executor, PROMPTS[i % len(PROMPTS)], seed=i, steps=steps, sampler=SamplerKind.DDIM,
                            size=size), executor.encode_prompt_pair(PROMPTS[i % len(PROMPTS)]))
                for i in range(count)]
    await run_engine(engine, requests)
    return recorder.latents


# -- tiles ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    max_abs: float  # worst over the latents
    mean_abs: float  # averaged over the latents
    psnr_min: float
    psnr_mean: float

    @classmethod
    def of(cls, diffs: Sequence[Diff]) -> Aggregate:
        psnrs = [d.psnr_db for d in diffs]  # inf for an identical image: the mean is then inf too
        return cls(max(d.max_abs for d in diffs), float(np.mean([d.mean_abs for d in diffs])), min(psnrs),
                   float(np.mean(psnrs)))


async def chunking_error(executor: OrtExecutor, latents: Sequence[np.ndarray], spec: ChunkingSpec,
                         wholes: Sequence[np.ndarray]) -> Aggregate:
    return Aggregate.of([Diff.between(await executor.decode(latent, spec), whole)
                         for latent, whole in zip(latents, wholes)])


async def tiles_report(executor: OrtExecutor, *, random_count: int, denoised_count: int, denoise_steps: int,
                       grids: Sequence[tuple[int, int]], overlaps: Sequence[int], size: int | None,
                       log: Log = _stderr) -> str:
    started = time.perf_counter()
    side = (size or executor.spec.default_size) // executor.spec.vae_scale_factor
    shape = (executor.spec.latent_channels, side, side)
    sets: list[tuple[str, list[np.ndarray]]] = []
    if random_count:
        sets.append((f"random N(0,1) x{random_count}",
                     [np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
                      for seed in range(random_count)]))
    if denoised_count:
        log(f"quality: denoising {denoised_count} prompts ({denoise_steps} steps, sequential policy)")
        sets.append((f"denoised x{denoised_count}", await denoised_latents(executor, denoised_count, denoise_steps,
                                                                          size)))
    rows = []
    for name, latents in sets:
        log(f"quality: {name}: whole decodes")
        wholes = [await executor.decode(latent) for latent in latents]
        specs = [ChunkingSpec("stages")] if executor.spec.vae_stages is not None else []
        specs += [ChunkingSpec("tiles", grid, overlap) for grid in grids for overlap in overlaps]
        for spec in specs:
            log(f"quality: {name}: {spec.describe()}")
            result = await chunking_error(executor, latents, spec, wholes)
            if spec.mode == "tiles":
                y0, y1, x0, x1 = tile_windows(shape[1:], spec.tile_grid, spec.tile_overlap)[0]
                tile = f"{y1 - y0}x{x1 - x0}"
            else:
                tile = "-"
            rows.append([name, spec.describe(), tile, _num(result.max_abs), _num(result.mean_abs),
                         _db(result.psnr_min), _db(result.psnr_mean)])
    stds = ", ".join(f"{float(np.std(latent)):.2f}" for latent in sets[-1][1]) if denoised_count else "-"
    header = ["latents", "chunking", "tile (latent px)", "max abs Δ", "mean abs Δ", "PSNR min (dB)",
              "PSNR mean (dB)"]
    return "\n".join([
        f"### VAE tiles vs whole decode: {executor.manifest['preset']} "
        f"(latent {shape[1]}x{shape[2]}, image {side * executor.spec.vae_scale_factor} px)",
        "",
        markdown_table(header, rows),
        "",
        "Δ: tiled (or staged) decode minus the whole decode, in decoder output units (about [-1, 1]); max over the "
        "latents' pixels, mean averaged over the latents. PSNR: uint8 images (engine.to_uint8_images), min and "
        "mean over the latents. Tile: latent window of each tile; grids are RxC, overlap in latent px (at least). "
        f"Denoised latents: sequential policy, DDIM {denoise_steps} steps, guidance {GUIDANCE}, raw (before the "
        f"graph's 1/scaling_factor), std per latent: {stds}. {WEIGHTS_NOTE}",
        f"Measured in {time.perf_counter() - started:.0f} s, ORT intra-op threads {executor.threads}.",
    ])


# -- skip-cfg -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    steps: int
    sampler: SamplerKind

    def describe(self) -> str:
        return f"{self.sampler.value} {self.steps}"


def assign_configs(prompts: int, configs: Sequence[Config], matrix: str) -> list[tuple[int, Config]]:
    """(prompt index, config) cases. "spread": prompt i runs configs[i % len(configs)]; "full": every prompt runs
    every config."""
    if matrix == "full":
        return [(i, config) for config in configs for i in range(prompts)]
    return [(i, configs[i % len(configs)]) for i in range(prompts)]


async def skip_cfg_report(executor: OrtExecutor, *, prompts: int, seeds: Sequence[int],
                          configs: Sequence[Config], matrix: str, policy: SkipCfgPolicy, size: int | None,
                          log: Log = _stderr) -> str:
    started = time.perf_counter()
    rows: list[list[str]] = []
    saturated: list[float] = []  # share of uint8 channel values at 0 or 255, per unskipped image
    for index, config in assign_configs(prompts, configs, matrix):
        prompt, label = PROMPTS[index], f"p{index}"
        embeddings = executor.encode_prompt_pair(prompt)
        plain: dict[int, Generated] = {}
        for seed in seeds:
            log(f"quality: {config.describe()} {label} seed {seed}")
            params = params_for(executor, prompt, seed=seed, steps=config.steps, sampler=config.sampler, size=size)
            plain[seed] = await generate(executor, params, embeddings, skip_cfg=None)
            skipped = await generate(executor, params, embeddings, skip_cfg=policy)
            assert plain[seed].skipped_steps == 0
            saturated.append(float(np.isin(plain[seed].image, (0, 255)).mean()))
            diff = Diff.between(skipped.image, plain[seed].image, uint8=True)
            rows.append([f"{label} s{seed}", config.describe(),
                         "max Skip-CFG vs none", f"{skipped.skipped_steps}/{config.steps}",
                         _num(diff.mean_abs, 3), f"{diff.max_abs:.0f}", _db(diff.psnr_db)])
        if len(seeds) > 1:
            diff = Diff.between(plain[seeds[0]].image, plain[seeds[1]].image, uint8=True)
            rows.append([f"{label} s{seeds[0]}/s{seeds[1]}", config.describe(), "ref: another seed", "0",
                         _num(diff.mean_abs, 3), f"{diff.max_abs:.0f}", _db(diff.psnr_db)])
        log(f"quality: {config.describe()} {label} guidance {REFERENCE_GUIDANCE}")
        params = params_for(executor, prompt, seed=seeds[0], steps=config.steps, sampler=config.sampler,
                            guidance=REFERENCE_GUIDANCE, size=size)
        other = await generate(executor, params, embeddings, skip_cfg=None)
        diff = Diff.between(other.image, plain[seeds[0]].image, uint8=True)
        rows.append([f"{label} s{seeds[0]}", config.describe(), f"ref: guidance {REFERENCE_GUIDANCE} vs {GUIDANCE}",
                     "0", _num(diff.mean_abs, 3), f"{diff.max_abs:.0f}", _db(diff.psnr_db)])
    header = ["case", "sampler steps", "comparison", "skipped steps", "mean abs Δ (uint8)", "max abs Δ (uint8)",
              "PSNR (dB)"]
    side = size or executor.spec.default_size
    return "\n".join([
        f"### Max Skip-CFG vs no Skip-CFG: {executor.manifest['preset']} ({side} px, guidance {GUIDANCE}, "
        f"window {policy.window_start}, budget {policy.budget_fraction})",
        "",
        markdown_table(header, rows),
        "",
        f"Each request ran alone through the Engine; max Skip-CFG skips every step the policy allows (step index >= "
        f"ceil({policy.window_start} T), at most floor({policy.budget_fraction} T) steps). Δ on the uint8 images "
        f"(0-255). Prompts p<i> are perf.quality.PROMPTS[i], s<n> the seed. References: the same prompt with another "
        f"seed (what a different image looks like), and guidance {REFERENCE_GUIDANCE} instead of {GUIDANCE} "
        f"without skipping (a small guidance change). Channel values at 0 or 255 (clipped) in the unskipped images: "
        f"{100 * float(np.mean(saturated)):.1f} % on average (a clipped value hides a change). {WEIGHTS_NOTE}",
        f"Measured in {time.perf_counter() - started:.0f} s, ORT intra-op threads {executor.threads}.",
    ])


# -- command line ---------------------------------------------------------------------------------------


def _list(parse: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse_list(text: str) -> tuple:
        try:
            return tuple(parse(part) for part in text.split(",") if part)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse_list


def _grid(text: str) -> tuple[int, int]:
    rows, _, cols = text.partition("x")
    return int(rows), int(cols)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf.quality", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("tiles", "VAE tiles (and stages) vs the whole decode"),
                       ("skip-cfg", "max Skip-CFG vs none, through the engine")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--model-dir", type=Path, required=True, help="exported model directory")
        command.add_argument("--threads", type=int, default=2, help="ORT intra-op threads per session (default 2)")
        command.add_argument("--size", type=int, default=None, help="image side in px (default: the manifest's)")
        command.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    tiles = commands.choices["tiles"]
    tiles.add_argument("--latents", type=int, default=8, help="seeded N(0,1) latents (default 8)")
    tiles.add_argument("--denoised", type=int, default=4, help="engine-denoised latents (default 4)")
    tiles.add_argument("--denoise-steps", type=int, default=20, help="DDIM steps of those (default 20)")
    tiles.add_argument("--grids", type=_list(_grid), default=((2, 2), (1, 2), (3, 3)), help="default 2x2,1x2,3x3")
    tiles.add_argument("--overlaps", type=_list(int), default=(2, 4, 8), help="latent px (default 2,4,8)")
    skip = commands.choices["skip-cfg"]
    skip.add_argument("--prompts", type=int, choices=range(1, len(PROMPTS) + 1), default=4, metavar="N", help=f"first N of the {len(PROMPTS)} prompts (default 4)")
    skip.add_argument("--seeds", type=_list(int), default=(1, 2), help="seeds per prompt (default 1,2)")
    skip.add_argument("--steps", type=_list(int), default=(20, 50), help="default 20,50")
    skip.add_argument("--samplers", type=_list(SamplerKind), default=(SamplerKind.DDIM, SamplerKind.EULER),
                      help="default ddim,euler")
    skip.add_argument("--matrix", choices=("spread", "full"), default="spread",
                      help="spread: prompt i runs config i mod #configs (default); full: every prompt every config")
    skip.add_argument("--window", type=float, default=0.6, help="Skip-CFG window start (default 0.6)")
    skip.add_argument("--budget", type=float, default=0.3, help="Skip-CFG budget fraction (default 0.3)")
    return parser


async def _run(args: argparse.Namespace) -> str:
    executor = OrtExecutor(args.model_dir, threads=args.threads)
    if args.command == "tiles":
        return await tiles_report(executor, random_count=args.latents, denoised_count=args.denoised,
                                  denoise_steps=args.denoise_steps, grids=args.grids, overlaps=args.overlaps,
                                  size=args.size)
    configs = [Config(steps, sampler) for steps in args.steps for sampler in args.samplers]
    return await skip_cfg_report(executor, prompts=args.prompts, seeds=args.seeds, configs=configs,
                                 matrix=args.matrix, policy=SkipCfgPolicy(args.window, args.budget), size=args.size)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = asyncio.run(_run(args))
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
