"""The controller under step changes of load, in the simulator: θ over time and how often it turns.

Arrivals are Poisson at `low` x the hardware bound, then `high` x, then `low` x again (one segment each).
For each segment it prints how many times θ moved and how many times its direction reversed, and a
one-line trace of θ. No oscillation means: within a segment, θ moves in one direction (at most one
reversal, at the segment's start, while the queue left by the previous segment drains).

    python -m perf.controller_trace --profile perf/profiles/h100-sd15-estimated.json
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from perf.report import hardware_bounds
from perf.simulate_cli import stage_shapes
from perf.simulator import simulate
from perf.workload import Arrival, RequestMix
from scheduler_backend.profile import LatencyProfile

LEVELS = " ▁▂▃▄▅▆▇█"


def step_arrivals(rates: list[float], segment_s: float, seed: int, mix: RequestMix = RequestMix()) -> list[Arrival]:
    rng, arrivals = random.Random(seed), []
    for index, rate in enumerate(rates):
        now_s, end_s = index * segment_s, (index + 1) * segment_s
        while (now_s := now_s + rng.expovariate(rate)) < end_s:
            arrivals.append(mix.draw(rng, now_s))
    return arrivals


def moves_and_reversals(thetas: list[float]) -> tuple[int, int]:
    steps = [b - a for a, b in zip(thetas, thetas[1:]) if abs(b - a) > 1e-9]
    reversals = sum(1 for a, b in zip(steps, steps[1:]) if (a > 0) != (b > 0))
    return len(steps), reversals


def sparkline(values: list[float], low: float, high: float, width: int = 60) -> str:
    if not values:
        return ""
    picks = [values[int(i * len(values) / width)] for i in range(min(width, len(values)))]
    return "".join(LEVELS[round((v - low) / (high - low + 1e-12) * (len(LEVELS) - 1))] for v in picks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--low", type=float, default=0.3)
    parser.add_argument("--high", type=float, default=0.9)
    parser.add_argument("--segment-requests", type=int, default=200, help="about this many requests per segment")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    profile = LatencyProfile.load(args.profile)
    bound = hardware_bounds(profile, RequestMix(), 5.0).throughput_per_s
    rates = [args.low * bound, args.high * bound, args.low * bound]
    segment_s = args.segment_requests / (sum(rates) / len(rates))
    result = simulate("synerdiff", step_arrivals(rates, segment_s, args.seed), profile, stages=stage_shapes(profile),
                      seed=args.seed)
    settings_low, settings_high = 0.70, 0.98
    print(f"load {args.low:.0%} -> {args.high:.0%} -> {args.low:.0%} of the bound ({bound:.3f} img/s), "
          f"{segment_s:.0f} s per segment, {len(result.records)} requests\n")
    print("| segment | load | iterations | θ moves | direction reversals | θ first -> last | θ over time |")
    print("|---|---|---|---|---|---|---|")
    for index, rate in enumerate(rates):
        thetas = [theta for time_s, theta in result.thresholds if index * segment_s <= time_s < (index + 1) * segment_s]
        moves, reversals = moves_and_reversals(thetas)
        print(f"| {index + 1} | {rate / bound:.0%} | {len(thetas)} | {moves} | {reversals} | "
              f"{thetas[0]:.2f} -> {thetas[-1]:.2f} | `{sparkline(thetas, settings_low, settings_high)}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
