"""`synerdiff overhead`: what serving adds to each denoising step (the BLS round trips and the `diffusion` loop's own
work: planning, guidance, the sampler step, bookkeeping), as a fraction of the UNet call the step wraps.

Method, in one command:
1. Bare step: the UNet alone in this process at R rows, run as the target's `unet` model runs it (perf/runtimes.py),
   the median of `repeats` calls after a warm-up.
2. Served step: a fresh tritonserver serving the target with policy `continuous` (every running request's rows in
   one UNet call per iteration; no threshold, no Skip-CFG). `concurrency` requests are sent at once with
   `low_steps`, then at once with `high_steps`, alternating, `repeats` times each; the served step is the marginal
   cost (median wall(high) - median wall(low)) / (high_steps - low_steps), where a wall is the time until the last
   of the requests answered. Whatever happens once per request (text encoding, admission, the VAE decode, the
   response) cancels out.
3. Overhead = served step - bare step, and its fraction of the bare step. R = concurrency x 2 with guidance
   (the conditional and unconditional rows), x 1 without.
4. Of which the loop's own work: the same marginal over the server's `synerdiff_loop_own_seconds` (real time of an
   iteration outside model calls), read from /metrics around each wall; the rest of the overhead is what the BLS
   calls add to the bare model call (inputs and outputs through shared memory or DLPack, Triton's scheduling of the
   call, the model running in its own stub process).

Invariants: every served request must come back with an image (else RuntimeError naming the outcomes); the bare
and the served steps run at the same latent size (the manifest's default) with the same runtime and thread count;
no number here is asserted, only reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from export.exporter import export_models
from export.render import ServingSettings, render_repository
from perf.bench_cli import comma_list
from perf.loadgen import replay
from perf.profile import median_seconds, unet_inputs
from perf.runtimes import Runner, runner, runtime_facts
from perf.served_targets import MEASURED_TARGETS, runtime_of, served_target
from perf.server import TritonServer, metric_value
from perf.workload import Arrival

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK = 0
LOOP_OWN_SUM = "synerdiff_loop_own_seconds_sum"


@dataclass(frozen=True)
class Probe:
    target: str
    concurrency: tuple[int, ...]
    low_steps: int
    high_steps: int
    guidance_scale: float
    repeats: int

    @property
    def rows_per_request(self) -> int:
        return 2 if self.guidance_scale > 1.0 else 1


@dataclass(frozen=True)
class StepOverhead:
    concurrency: int
    rows: int
    bare_step_s: float  # the UNet call alone
    served_step_s: float  # the marginal cost of one more step through the server
    loop_own_step_s: float  # of it, the loop's own work outside model calls

    @property
    def overhead_s(self) -> float:
        return self.served_step_s - self.bare_step_s

    @property
    def fraction(self) -> float:
        return self.overhead_s / self.bare_step_s


def marginal_step_seconds(low_walls: Sequence[float], high_walls: Sequence[float], low_steps: int,
                          high_steps: int) -> float:
    """The cost of one more step: the difference of the median walls over the difference of the step counts."""
    if high_steps <= low_steps:
        raise ValueError(f"high_steps ({high_steps}) must exceed low_steps ({low_steps})")
    return (statistics.median(high_walls) - statistics.median(low_walls)) / (high_steps - low_steps)


def format_table(results: Sequence[StepOverhead]) -> str:
    lines = ["| requests at once | UNet rows | bare UNet step | served step | overhead | overhead / UNet step "
             "| of which the loop's own work |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.concurrency} | {r.rows} | {r.bare_step_s * 1e3:.2f} ms | {r.served_step_s * 1e3:.2f} ms | "
              f"{r.overhead_s * 1e3:+.2f} ms | {r.fraction:+.1%} | {r.loop_own_step_s * 1e3:.2f} ms |"
              for r in results]
    return "\n".join(lines)


# -- the two measurements ---------------------------------------------------------------------------------------


def bare_step_seconds(unet: Runner, manifest: dict[str, Any], rows: int, repeats: int) -> float:
    side = manifest["default_size"] // manifest["vae_scale_factor"]
    call = unet.bind(unet_inputs(manifest, rows, (side, side), np.random.default_rng(0)))
    return median_seconds(call, repeats, warmups=2)


@dataclass(frozen=True)
class ServedRun:
    wall_s: float  # until the last request answered with its image
    loop_own_s: float  # the server's loop-own seconds over the run (every iteration of it)


def served_run(server: TritonServer, concurrency: int, steps: int, guidance_scale: float) -> ServedRun:
    """`concurrency` requests sent at once, each for `steps` steps."""
    arrivals = [Arrival(0.0, steps, guidance_scale, seed=index) for index in range(concurrency)]
    own_before = metric_value(server.ports.metrics_url, LOOP_OWN_SUM) or 0.0
    records = asyncio.run(replay(server.ports.grpc_url, arrivals, progress=False))
    own_after = metric_value(server.ports.metrics_url, LOOP_OWN_SUM) or 0.0
    outcomes = [record.outcome for record in records]
    if outcomes != ["image"] * concurrency:
        raise RuntimeError(f"served requests did not all return an image: {outcomes}")
    return ServedRun(max(record.finished_s for record in records if record.finished_s is not None),
                     own_after - own_before)


def served_steps(server: TritonServer, concurrency: int, probe: Probe) -> tuple[float, float]:
    """(served step, the loop's own work in it): marginal seconds per step."""
    served_run(server, concurrency, probe.low_steps, probe.guidance_scale)  # warm-up at this batch
    low: list[ServedRun] = []
    high: list[ServedRun] = []
    for _ in range(probe.repeats):  # alternated, so drift of the machine hits both alike
        low.append(served_run(server, concurrency, probe.low_steps, probe.guidance_scale))
        high.append(served_run(server, concurrency, probe.high_steps, probe.guidance_scale))
    step_s = marginal_step_seconds([r.wall_s for r in low], [r.wall_s for r in high], probe.low_steps,
                                   probe.high_steps)
    own_s = ((statistics.fmean(r.loop_own_s for r in high) - statistics.fmean(r.loop_own_s for r in low))
             / (probe.high_steps - probe.low_steps))
    return step_s, own_s


def measure(model_dir: Path, probe: Probe, build_dir: Path, log_path: Path) -> list[StepOverhead]:
    """Serves the target (policy continuous) and measures the served steps, then the bare ones with the server
    stopped, so neither measurement shares the machine with the other."""
    settings = ServingSettings(policy="continuous", max_running_requests=max(16, *probe.concurrency))
    repository = render_repository(model_dir, build_dir / "overhead-repositories" / model_dir.name / probe.target,
                                   probe.target, settings)
    with served_target(probe.target, model_dir, settings).server(repository, log_path) as server:
        served = {c: served_steps(server, c, probe) for c in probe.concurrency}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    unet = runner(runtime_of(probe.target), model_dir, manifest, "unet", settings.unet_threads)
    rows = {c: c * probe.rows_per_request for c in probe.concurrency}
    return [StepOverhead(c, rows[c], bare_step_seconds(unet, manifest, rows[c], 2 * probe.repeats + 1), *served[c])
            for c in probe.concurrency]


# -- the command ----------------------------------------------------------------------------------------------


def step_pair(text: str) -> tuple[int, int]:
    """"4,20" -> (4, 20): two different step counts >= 1, in increasing order."""
    try:
        low, high = sorted(int(part) for part in text.split(","))
    except ValueError:
        low = high = 0
    if not 1 <= low < high:
        raise argparse.ArgumentTypeError(f"expected two different step counts LOW,HIGH (>= 1), got {text!r}")
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="bench", help="model preset to export (if needed) and serve")
    parser.add_argument("--target", choices=MEASURED_TARGETS, default="cpu",
                        help="how the models are served: cpu (ONNX Runtime), cpu-torch, gpu-torch")
    parser.add_argument("--concurrency", type=comma_list(int), default=(1, 4),
                        help="requests sent at once, each a row count to measure (default 1,4)")
    parser.add_argument("--steps", type=step_pair, default=(4, 20), metavar="LOW,HIGH",
                        help="the two step counts whose difference gives the served step (default 4,20)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="> 1: two UNet rows per request")
    parser.add_argument("--repeats", type=int, default=5, help="walls per step count and concurrency")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")


def run(args: argparse.Namespace) -> int:
    model_dir = export_models(args.preset, args.build_dir / "models" / args.preset, seed=0, force=False)
    probe = Probe(args.target, tuple(args.concurrency), *args.steps, args.guidance_scale, args.repeats)
    log_path = args.build_dir / "overhead" / f"{args.preset}-{args.target}.log"
    results = measure(model_dir, probe, args.build_dir, log_path)
    print(f"Preset `{args.preset}`, target `{args.target}` ({runtime_of(args.target)}), policy continuous, "
          f"steps {probe.low_steps} vs {probe.high_steps}, guidance {probe.guidance_scale}, "
          f"{probe.repeats} walls each; server log {log_path}")
    print(format_table(results))
    if args.out:
        args.out.write_text(json.dumps({"probe": asdict(probe), "preset": args.preset,
                                        "machine": runtime_facts(runtime_of(args.target)),
                                        "results": [{**asdict(r), "overhead_s": r.overhead_s, "fraction": r.fraction}
                                                    for r in results]}, indent=1) + "\n")
    return EXIT_OK
