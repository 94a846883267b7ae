#!/usr/bin/env python3
"""Write a perf_analyzer `--request-intervals` file for on/off bursts (microseconds, one per line).

Each cycle is `on_s` seconds of Poisson arrivals at `burst x rate` req/s followed by `off_s` seconds of
silence; the file holds `cycles` cycles. By default off_s = on_s x (burst - 1), so the mean rate over a
cycle is `rate` (the same on/off shape as perf/workload.py's bursty_arrivals). perf_analyzer sends its
k-th request at the sum of the first k intervals and loops over the file when a run lasts longer than
it, so the file starts inside the first burst (the gap after its first arrival) and its last interval
carries the silence after the last burst: the load repeats with period cycles x (on_s + off_s) exactly.
Deterministic for a seed. Standard library only.

    python perf/perf_analyzer/intervals.py --rate 0.5 --burst 4 --on-s 4 --cycles 5 --seed 1 \
        --out build/perf_analyzer/bursts.txt
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path


def burst_arrivals(rate_per_s: float, burst: float, on_s: float, off_s: float, cycles: int,
                   seed: int) -> list[float]:
    """Arrival times (seconds from the start of the first cycle), ascending, all inside the on windows."""
    if rate_per_s <= 0 or burst <= 0 or on_s <= 0 or off_s < 0 or cycles < 1:
        raise ValueError("need rate > 0, burst > 0, on_s > 0, off_s >= 0, cycles >= 1")
    rng = random.Random(seed)
    arrivals: list[float] = []
    for cycle in range(cycles):
        start = cycle * (on_s + off_s)
        now = start + rng.expovariate(rate_per_s * burst)
        while now < start + on_s:
            arrivals.append(now)
            now += rng.expovariate(rate_per_s * burst)
    return arrivals


def intervals_us(arrivals: list[float], period_s: float) -> list[int]:
    """Gaps between successive arrivals in whole microseconds (>= 1), the one that wraps around the period
    last: perf_analyzer's request k goes at sum(gaps[:k + 1]), i.e. at arrivals[k + 1] - arrivals[0]."""
    if not arrivals:
        raise ValueError("no arrival fell in the on windows: raise rate, burst, on_s or cycles")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])] + [arrivals[0] + period_s - arrivals[-1]]
    return [max(1, round(gap * 1e6)) for gap in gaps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, required=True, help="mean request rate over a cycle, req/s")
    parser.add_argument("--burst", type=float, default=3.0, help="rate multiplier while on (default 3)")
    parser.add_argument("--on-s", type=float, default=10.0, help="seconds of arrivals per cycle (default 10)")
    parser.add_argument("--off-s", type=float, help="seconds of silence per cycle (default on_s x (burst - 1))")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    off_s = args.on_s * max(args.burst - 1.0, 0.0) if args.off_s is None else args.off_s
    arrivals = burst_arrivals(args.rate, args.burst, args.on_s, off_s, args.cycles, args.seed)
    period_s = args.cycles * (args.on_s + off_s)
    text = "".join(f"{gap}\n" for gap in intervals_us(arrivals, period_s))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    print(f"{len(arrivals)} requests over {period_s:g} s (mean {len(arrivals) / period_s:.3g} req/s; "
          f"{args.burst:g} x {args.rate:g} req/s for {args.on_s:g} s, then {off_s:g} s off) x {args.cycles}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
