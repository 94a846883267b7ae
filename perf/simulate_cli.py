"""`synerdiff simulate`: every policy on the same arrivals in the discrete-event simulator, as a table.

For one latency profile: mean / P50 / P99 end-to-end latency of each policy at a few loads (fractions of
the hardware bound) with Poisson and with bursty arrivals, and each policy's maximum sustainable
throughput (the highest Poisson rate whose P99 stays under the SLO; found by bisection), with its ratio
to `synerdiff`. Deterministic for its seeds (one run per seed, latencies pooled). Prints Markdown; `--json` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perf.report import Bounds, bounds_line, hardware_bounds, policy_table, pooled_summary
from perf.simulator import SimulationResult, simulate
from perf.workload import ARRIVALS, RequestMix
from scheduler_backend.policies import POLICIES
from scheduler_backend.profile import LatencyProfile
from scheduler_backend.vae_chunks import StageShapes



@dataclass(frozen=True)
class Summary:
    mean_s: float
    p50_s: float
    p99_s: float
    throughput_per_s: float
    rejected: int
    skipped_cfg_fraction: float
    planning_p50_ms: float
    planning_max_ms: float


def summarize(results: Sequence[SimulationResult]) -> Summary:
    """Latencies pooled over the runs (one per seed); throughput averaged over them."""
    latency = pooled_summary([result.records for result in results])
    skipped = sum(result.skipped_cfg_rows for result in results)
    rows = sum(result.unet_rows for result in results) + skipped
    planning = [seconds for result in results for seconds in result.planning_s]
    return Summary(latency.mean_s, latency.p50_s, latency.p99_s, latency.throughput_per_s, latency.rejected,
                   skipped / max(rows, 1), 1000 * float(np.median(planning)), 1000 * float(np.max(planning)))


@dataclass(frozen=True)
class Job:
    policy: str
    arrivals: str
    rate_per_s: float
    count: int
    seeds: tuple[int, ...]
    profile: dict[str, Any]
    stages: tuple[tuple[int, ...], tuple[int, ...]] | None


def run_job(job: Job) -> Summary:
    profile = LatencyProfile.from_json(job.profile)
    stages = StageShapes(*job.stages) if job.stages else None
    return summarize([simulate(job.policy, ARRIVALS[job.arrivals](job.rate_per_s, job.count, seed), profile,
                               stages=stages, seed=seed) for seed in job.seeds])


def stage_shapes(profile: LatencyProfile) -> StageShapes | None:
    stages = profile.metadata.get("vae_stages")
    return StageShapes(tuple(stages["channels"]), tuple(stages["scales"])) if stages else None


def max_sustainable(policy: str, base: Job, bounds: Bounds, pool: ProcessPoolExecutor, iterations: int) -> float:
    """The highest Poisson rate (bisection between 5 % and 150 % of the bound) whose P99 <= SLO."""
    low, high = 0.05 * bounds.throughput_per_s, 1.5 * bounds.throughput_per_s
    for _ in range(iterations):
        middle = (low + high) / 2
        summary = pool.submit(run_job, Job(policy, "poisson", middle, base.count, base.seeds, base.profile,
                                           base.stages)).result()
        if summary.p99_s <= bounds.slo_s and summary.rejected == 0:
            low = middle
        else:
            high = middle
    return low


def sweep(profile: LatencyProfile, policies: Sequence[str], loads: Sequence[float], count: int, seeds: tuple[int, ...],
          slo_factor: float, bisection: int, workers: int) -> dict[str, Any]:
    bounds = hardware_bounds(profile, RequestMix(), slo_factor)
    stages = stage_shapes(profile)
    stage_tuple = (stages.channels, stages.scales) if stages else None
    base = Job("", "poisson", 0.0, count, seeds, profile.to_json(), stage_tuple)
    with ProcessPoolExecutor(workers) as pool:
        grid = {(policy, kind, load): pool.submit(run_job, Job(policy, kind, load * bounds.throughput_per_s, count,
                                                               seeds, base.profile, stage_tuple))
                for policy in policies for kind in ARRIVALS for load in loads}
        with ThreadPoolExecutor(len(policies)) as bisections:  # each bisection waits on the process pool
            searches = {policy: bisections.submit(max_sustainable, policy, base, bounds, pool, bisection)
                        for policy in policies}
            capacity = {policy: search.result() for policy, search in searches.items()}
        latency = {key: future.result() for key, future in grid.items()}
    return {"bounds": asdict(bounds), "loads": list(loads), "count": count, "seeds": list(seeds),
            "profile": profile.metadata, "capacity": capacity,
            "latency": {f"{p}|{k}|{l}": asdict(s) for (p, k, l), s in latency.items()}}


def markdown(result: dict[str, Any], policies: Sequence[str]) -> str:
    bounds = Bounds(**result["bounds"])
    columns = [f"{kind} {load:.0%}: mean / P99 s" for kind in ARRIVALS for load in result["loads"]]
    cells = {policy: [f"{s['mean_s']:.2f} / {s['p99_s']:.2f}"
                      for kind in ARRIVALS for load in result["loads"]
                      for s in [result["latency"][f"{policy}|{kind}|{load}"]]]
             for policy in policies}
    heaviest = {p: result["latency"][f"{p}|poisson|{result['loads'][-1]}"] for p in policies}
    lines = [f"{bounds_line(bounds)} {result['count']} requests per run, latencies pooled over seeds "
             f"{', '.join(map(str, result['seeds']))}.", "",
             *policy_table(bounds, result["capacity"], columns, cells), "",
             "Skip-CFG share of UNet rows at the highest load: "
             + ", ".join(f"{p} {s['skipped_cfg_fraction']:.1%}" for p, s in heaviest.items() if s["skipped_cfg_fraction"]),
             "Planner decision time, median ms: "
             + ", ".join(f"{p} {s['planning_p50_ms']:.2f}" for p, s in heaviest.items())]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", type=Path, required=True, help="latency profile JSON (synerdiff profile)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--loads", default="0.4,0.7", help="offered loads as fractions of the hardware bound")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seeds", default="1,2,3", help="one run per seed; latencies are pooled")
    parser.add_argument("--slo-factor", type=float, default=5.0,
                        help="P99 bound for 'sustainable', in single-request latencies")
    parser.add_argument("--bisection", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")


def run(args: argparse.Namespace) -> int:
    profile = LatencyProfile.load(args.profile)
    policies = [p for p in args.policies.split(",") if p]
    result = sweep(profile, policies, [float(x) for x in args.loads.split(",")], args.requests,
                   tuple(int(x) for x in args.seeds.split(",")),
                   args.slo_factor, args.bisection, args.workers)
    print(markdown(result, policies))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.simulate_cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
