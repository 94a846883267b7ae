"""`synerdiff bench`: the real tritonserver under an open-loop workload (perf.workload, replayed by perf.loadgen).

* `bench run --url H:P --rate R --requests N`: replay one workload against a running server; print a summary
  line and, with --out, write every request's record as JSON.
* `bench compare`: the policies side by side. For each repetition, for each load, for each policy (interleaved
  in that order, so drift of the machine hits every policy alike): start a fresh tritonserver on free loopback
  ports with the preset's repository rendered for that policy and the target (`cpu` by default; `cpu-torch`,
  `gpu-torch`: perf/served_targets.py, the profile measured under the target's runtime), warm it up with 2
  requests, replay the workload of each arrival pattern in turn, stop it. Loads are fractions of the hardware
  bound of the request mix (perf.report.hardware_bounds on the model's latency profile). Writes results.json
  (every record and summary), results.md (the table, also printed) and the plots of perf.bench_plots into --out.

Invariants:
- every policy replays the identical workload of a (repetition, load, arrival pattern): rate = load x the bound,
  seed = --seed + repetition, the same request mix;
- every run holds exactly one record per arrival (perf.loadgen.replay asserts it);
- a load is sustainable for a policy when its Poisson runs (those of the first pattern when Poisson is not run),
  pooled over repetitions, served every request with P99 <= SLO = slo_factor x the profile's single-request
  latency. The maximum sustainable throughput is the img/s achieved at the highest sustainable load of the grid
  (coarse: the true maximum lies between that load and the next one), and 0 when no load of the grid is;
- nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Any, Callable, Sequence

from export.exporter import export_models
from export.render import ServingSettings, render_repository
from perf.bench_plots import Cell, write_plots
from perf.loadgen import DEFAULT_TIMEOUT_S, replay, server_version
from perf.profile import machine_facts
from perf.served_targets import MEASURED_TARGETS, ServedTarget, runtime_of, served_target
from perf.report import (Bounds, LatencySummary, RequestRecord, bounds_line, hardware_bounds, policy_table,
                         pooled_summary, summarize_records, summary_line)
from perf.serve import serving_profile
from perf.workload import ARRIVALS, Arrival, RequestMix
from scheduler_backend.policies import POLICIES
from scheduler_backend.profile import LatencyProfile

ROOT = Path(__file__).resolve().parents[1]
# Defaults sized for a 2-core CPU (docs/perf.md): about 13 minutes for the 4 policies; 130 % of the bound
# saturates every policy, so the img/s achieved there is what it can do. Ablations via --policies.
DEFAULT_POLICIES = ("sequential", "static", "continuous", "synerdiff")
DEFAULT_LOADS = (0.5, 0.9, 1.3)
DEFAULT_REQUESTS, DEFAULT_REPEATS = 10, 1
DEFAULT_STEPS = (10, 15, 20)  # short enough for CPU runs; 80 % guided (RequestMix's default)
WARM_UP_REQUESTS, WARM_UP_STEPS = 2, 2  # enough to load and run every model once
TIMEOUT_SLOS = 10.0  # each request's client-side timeout in a compare, in SLOs
EXIT_OK, EXIT_UNREACHABLE = 0, 1


# -- argument parsing ------------------------------------------------------------------------------------


def comma_list(convert: Callable[[str], Any], choices: Sequence[str] = ()) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type: a non-empty comma-separated list, each item converted (and checked against `choices`)."""
    def parse(text: str) -> tuple[Any, ...]:
        items = tuple(convert(item) for item in text.split(",") if item)
        unknown = [item for item in items if choices and item not in choices]
        if not items or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices) or 'values'}"
                                             f"; got {text!r}")
        return items
    return parse


def add_mix_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=comma_list(int), default=DEFAULT_STEPS,
                        help="step counts drawn uniformly per request (default 10,15,20)")
    parser.add_argument("--guided-fraction", type=float, default=RequestMix.guided_fraction,
                        help="share of requests with classifier-free guidance (the others use guidance 1.0)")
    parser.add_argument("--seed", type=int, default=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    once = commands.add_parser("run", help="replay one workload against a running server")
    once.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port")
    once.add_argument("--model", default="diffusion")
    once.add_argument("--rate", type=float, required=True, help="mean arrival rate, requests per second")
    once.add_argument("--requests", type=int, default=20)
    once.add_argument("--arrivals", choices=sorted(ARRIVALS), default="poisson")
    once.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per request, seconds")
    once.add_argument("--out", type=Path, help="write the records here (JSON)")
    add_mix_arguments(once)

    side = commands.add_parser("compare", help="every policy on the same workloads, one fresh server per run")
    side.add_argument("--preset", default="bench", help="model preset to export (if needed) and serve")
    side.add_argument("--target", choices=MEASURED_TARGETS, default="cpu",
                      help="how the models are served: cpu (ONNX Runtime), cpu-torch, gpu-torch (default cpu)")
    side.add_argument("--policies", type=comma_list(str, POLICIES), default=DEFAULT_POLICIES,
                      help=f"default {','.join(DEFAULT_POLICIES)}; also the ablations of {', '.join(POLICIES)}")
    side.add_argument("--loads", type=comma_list(float), default=DEFAULT_LOADS,
                      help="offered loads as fractions of the hardware bound")
    side.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per run")
    side.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    side.add_argument("--arrivals", type=comma_list(str, tuple(ARRIVALS)), default=tuple(ARRIVALS))
    side.add_argument("--slo-factor", type=float, default=5.0,
                      help="P99 bound for 'sustainable', in single-request latencies")
    side.add_argument("--out", type=Path, help="output directory (default build/bench/<timestamp>)")
    side.add_argument("--build-dir", type=Path, default=ROOT / "build")
    add_mix_arguments(side)


def request_mix(args: argparse.Namespace) -> RequestMix:
    return RequestMix(steps=tuple(args.steps), guided_fraction=args.guided_fraction)


def run(args: argparse.Namespace) -> int:
    return run_once(args) if args.bench_command == "run" else run_compare(args)


# -- bench run ---------------------------------------------------------------------------------------------


def records_json(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    return [asdict(record) for record in records]


def run_once(args: argparse.Namespace) -> int:
    if asyncio.run(server_version(args.url)) is None:
        print(f"synerdiff bench: no ready server at {args.url}", file=sys.stderr)
        return EXIT_UNREACHABLE
    arrivals = ARRIVALS[args.arrivals](args.rate, args.requests, args.seed, request_mix(args))
    records = asyncio.run(replay(args.url, arrivals, model=args.model, timeout_s=args.timeout))
    print(f"{args.arrivals} at {args.rate:g} req/s: {summary_line(summarize_records(records))}")
    if args.out:
        args.out.write_text(json.dumps(records_json(records), indent=1) + "\n")
    return EXIT_OK


# -- bench compare: the plan and its runs --------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    preset: str
    target: str
    policies: tuple[str, ...]
    loads: tuple[float, ...]
    arrivals: tuple[str, ...]
    requests: int
    repeats: int
    seed: int
    mix: RequestMix
    slo_factor: float
    bounds: Bounds

    @property
    def capacity_arrivals(self) -> str:
        """The arrival pattern that decides "sustainable"."""
        return "poisson" if "poisson" in self.arrivals else self.arrivals[0]

    @property
    def timeout_s(self) -> float:
        return TIMEOUT_SLOS * self.bounds.slo_s

    def workload(self, kind: str, load: float, repeat: int) -> list[Arrival]:
        return ARRIVALS[kind](load * self.bounds.throughput_per_s, self.requests, self.seed + repeat, self.mix)


@dataclass(frozen=True)
class Run:
    repeat: int
    load: float
    policy: str
    arrivals: str
    records: tuple[RequestRecord, ...]
    load_average: float  # the machine's 1-minute load average before this run's server started


@dataclass(frozen=True)
class Capacity:
    load: float | None  # the highest sustainable load of the grid; None when none is
    images_per_s: float  # achieved there; 0 when none is


@dataclass(frozen=True)
class Comparison:
    plan: Plan
    runs: tuple[Run, ...]
    server_version: str
    wall_s: float

    def summaries(self) -> dict[Cell, LatencySummary]:
        """(policy, arrival pattern, load) -> its runs pooled over repetitions."""
        groups: dict[Cell, list[Sequence[RequestRecord]]] = defaultdict(list)
        for run in self.runs:
            groups[(run.policy, run.arrivals, run.load)].append(run.records)
        return {cell: pooled_summary(runs) for cell, runs in groups.items()}

    def latencies(self) -> dict[Cell, list[float]]:
        latencies: dict[Cell, list[float]] = defaultdict(list)
        for run in self.runs:
            latencies[(run.policy, run.arrivals, run.load)] += [r.latency_s for r in run.records
                                                                if r.latency_s is not None]
        return latencies

    def capacity(self, summaries: dict[Cell, LatencySummary]) -> dict[str, Capacity]:
        kind, slo_s = self.plan.capacity_arrivals, self.plan.bounds.slo_s
        result = {}
        for policy in self.plan.policies:
            passing = [load for load in self.plan.loads
                       if summaries[(policy, kind, load)].all_served and summaries[(policy, kind, load)].p99_s <= slo_s]
            best = max(passing, default=None)
            result[policy] = Capacity(best, 0.0 if best is None else summaries[(policy, kind, best)].throughput_per_s)
        return result


def prepare(preset: str, target: str, policies: Sequence[str],
            build_dir: Path) -> tuple[LatencyProfile, dict[str, Path], ServedTarget]:
    """Exports the preset (if not yet), measures its profile under the target's runtime (if not yet) and renders one
    repository of the target per policy."""
    model_dir = export_models(preset, build_dir / "models" / preset, seed=0, force=False)
    profile = serving_profile(model_dir, ServingSettings(), runtime_of(target))
    repositories = {policy: render_repository(model_dir, build_dir / "bench-repositories" / preset / target / policy,
                                              target, ServingSettings(policy=policy, profile=str(profile)))
                    for policy in policies}
    return LatencyProfile.load(profile), repositories, served_target(target, model_dir, ServingSettings())


def warm_up(grpc_url: str, mix: RequestMix) -> None:
    """Two short guided requests at once; raises RuntimeError unless both come back with an image."""
    arrivals = [Arrival(0.0, WARM_UP_STEPS, mix.guidance_scale, seed=i) for i in range(WARM_UP_REQUESTS)]
    outcomes = [record.outcome for record in asyncio.run(replay(grpc_url, arrivals))]
    if outcomes != ["image"] * WARM_UP_REQUESTS:
        raise RuntimeError(f"warm-up at {grpc_url} failed: {outcomes}")


def measure(plan: Plan, served: ServedTarget, policy: str, repository: Path, load: float, repeat: int,
            logs: Path) -> tuple[list[Run], str]:
    """One fresh server: warm-up, then each arrival pattern's workload in turn. Returns the runs and the
    server's version."""
    log = logs / f"r{repeat}-load{load:g}-{policy}.log"
    load_average = os.getloadavg()[0]
    with served.server(repository, log) as server:
        url = server.ports.grpc_url
        version = asyncio.run(server_version(url)) or "unknown"
        warm_up(url, plan.mix)
        runs = [Run(repeat, load, policy, kind,
                    tuple(asyncio.run(replay(url, plan.workload(kind, load, repeat), timeout_s=plan.timeout_s))),
                    load_average)
                for kind in plan.arrivals]
    return runs, version


def compare(plan: Plan, served: ServedTarget, repositories: dict[str, Path], logs: Path,
            started_s: float) -> Comparison:
    """Every (repetition, load, policy) in that nesting order; prints a line per run as it ends."""
    runs: list[Run] = []
    version = "unknown"
    order = list(product(range(plan.repeats), plan.loads, plan.policies))
    for index, (repeat, load, policy) in enumerate(order, 1):
        measured, version = measure(plan, served, policy, repositories[policy], load, repeat, logs)
        for run in measured:
            print(f"[{index}/{len(order)}] repeat {repeat} load {load:.0%} {policy} {run.arrivals}: "
                  f"{summary_line(summarize_records(run.records))}", flush=True)
        runs += measured
    return Comparison(plan, tuple(runs), version, time.perf_counter() - started_s)


# -- bench compare: the report ------------------------------------------------------------------------------


def cell_text(summary: LatencySummary) -> str:
    if not summary.images:
        return f"- (0/{summary.requests})"
    text = f"{summary.mean_s:.2f} / {summary.p50_s:.2f} / {summary.p99_s:.2f}"
    return text if summary.all_served else f"{text} ({summary.images}/{summary.requests})"


def closeness_line(comparison: Comparison, summaries: dict[Cell, LatencySummary]) -> str:
    """How close each policy gets to the bound: its peak achieved img/s at any load, and its P50 at the lowest
    load against the single-request latency."""
    plan, bounds = comparison.plan, comparison.plan.bounds
    kind, lowest = plan.capacity_arrivals, min(plan.loads)
    peaks = {p: max(summaries[(p, kind, load)].throughput_per_s for load in plan.loads) for p in plan.policies}
    return (f"How close each policy gets ({kind}): peak achieved img/s at any load of the grid, against the bound "
            f"{bounds.throughput_per_s:.3f}: "
            + ", ".join(f"{p} {v:.3f} ({v / bounds.throughput_per_s:.0%})" for p, v in peaks.items())
            + f"; P50 at {lowest:.0%} load against the single-request latency {bounds.single_latency_s:.2f} s: "
            + ", ".join(f"{p} {summaries[(p, kind, lowest)].p50_s / bounds.single_latency_s:.2f}x"
                        for p in plan.policies) + ".")


def load_average_line(comparison: Comparison) -> str:
    """Other work on the machine: the 1-minute load average before each server start (it still carries some
    of the previous run's own load)."""
    values = [run.load_average for run in comparison.runs]
    return (f"1-minute load average before each server start: {min(values):.2f} to {max(values):.2f} "
            f"(on {os.cpu_count()} CPUs; more than a little means other work shared the machine).")


def header(comparison: Comparison) -> str:
    plan = comparison.plan
    mix = plan.mix
    return (f"{bounds_line(plan.bounds)} Preset `{plan.preset}`, target `{plan.target}`; request mix: steps "
            f"{'/'.join(map(str, mix.steps))}, {mix.guided_fraction:.0%} guided at {mix.guidance_scale}; "
            f"{plan.requests} requests per run, {plan.repeats} repetition(s) "
            f"(seeds {plan.seed}..{plan.seed + plan.repeats - 1}), arrivals {', '.join(plan.arrivals)}; "
            f"Triton {comparison.server_version}; "
            f"wall time {comparison.wall_s / 60:.1f} min.")


def definitions(plan: Plan) -> str:
    grid = ", ".join(f"{load:.0%}" for load in plan.loads)
    return (f"Max sustainable: the achieved img/s at the highest load of the grid ({grid} of the bound, "
            f"{plan.capacity_arrivals}) whose P99 <= {plan.bounds.slo_s:.2f} s with every request served. The grid is "
            f"coarse: the true maximum lies between that load and the next one of the grid (at or above it for the "
            f"highest). Cells: mean / P50 / P99 end-to-end seconds pooled over repetitions; (served/requests) when "
            f"not all were served.")


def capacity_line(capacity: dict[str, Capacity], loads: Sequence[float]) -> str:
    return "Highest sustainable load: " + ", ".join(
        f"{p} {c.load:.0%}" if c.load is not None else f"{p} none (below {min(loads):.0%})"
        for p, c in capacity.items()) + "."


def markdown(comparison: Comparison) -> str:
    plan = comparison.plan
    summaries = comparison.summaries()
    capacity = comparison.capacity(summaries)
    columns = [f"{kind} {load:.0%}: mean / P50 / P99 s" for kind in plan.arrivals for load in plan.loads]
    cells = {p: [cell_text(summaries[(p, kind, load)]) for kind in plan.arrivals for load in plan.loads]
             for p in plan.policies}
    return "\n".join([
        header(comparison), "", definitions(plan), "",
        *policy_table(plan.bounds, {p: c.images_per_s for p, c in capacity.items()}, columns, cells), "",
        capacity_line(capacity, plan.loads), closeness_line(comparison, summaries), load_average_line(comparison),
    ])


def run_json(run: Run) -> dict[str, Any]:
    return {"repeat": run.repeat, "load": run.load, "policy": run.policy, "arrivals": run.arrivals,
            "load_average": run.load_average, "summary": asdict(summarize_records(run.records)),
            "records": records_json(run.records)}


def results_json(comparison: Comparison, arguments: dict[str, Any]) -> dict[str, Any]:
    plan = comparison.plan
    summaries = comparison.summaries()
    return {
        "arguments": arguments,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_s": comparison.wall_s,
        "server_version": comparison.server_version,
        "machine": {**machine_facts(ServingSettings.unet_threads, ServingSettings.vae_threads,
                                    runtime_of(plan.target)),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "plan": {**asdict(plan), "capacity_arrivals": plan.capacity_arrivals, "timeout_s": plan.timeout_s},
        "capacity": {p: asdict(c) for p, c in comparison.capacity(summaries).items()},
        "summaries": {f"{p}|{k}|{l:g}": asdict(s) for (p, k, l), s in summaries.items()},
        "runs": [run_json(run) for run in comparison.runs],
    }


def write_outputs(comparison: Comparison, out: Path, arguments: dict[str, Any]) -> str:
    """results.json, results.md and the plots into `out`; returns the Markdown."""
    plan = comparison.plan
    text = markdown(comparison)
    (out / "results.json").write_text(json.dumps(results_json(comparison, arguments), indent=1) + "\n")
    plots = write_plots(out, plan.policies, plan.arrivals, plan.loads, plan.bounds, comparison.summaries(),
                        comparison.latencies())
    (out / "results.md").write_text(text + "\n\nPlots: " + ", ".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    return text


def run_compare(args: argparse.Namespace) -> int:
    started_s = time.perf_counter()
    out = args.out or args.build_dir / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    profile, repositories, served = prepare(args.preset, args.target, args.policies, args.build_dir)
    mix = request_mix(args)
    plan = Plan(args.preset, args.target, tuple(args.policies), tuple(sorted(set(args.loads))), tuple(args.arrivals),
                args.requests, args.repeats, args.seed, mix, args.slo_factor,
                hardware_bounds(profile, mix, args.slo_factor))
    print(f"bench compare: {bounds_line(plan.bounds)} Writing to {out}", flush=True)
    comparison = compare(plan, served, repositories, out / "logs", started_s)
    arguments = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    print(write_outputs(comparison, out, arguments))
    print(f"\nwrote {out}/results.md, results.json and plots in {comparison.wall_s / 60:.1f} min")
    return EXIT_OK


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench_cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
