"""`synerdiff soak` / `python -m perf.soak`: many requests of mixed sizes at a Poisson rate near capacity against
a real tritonserver, and whether the server leaks: responses, memory, shared-memory regions.

Job: start a server on a preset (or attach to a running one by its gRPC address); warm it up with a burst at the
mix's largest size (the model runtimes' memory pools reach their high-water mark) and then a burst of the mix
itself, whose images per second are the capacity; replay `requests` Poisson arrivals of the mix with perf.loadgen
at `load` x capacity (or at `--rate`); and compare the server before (after the warm-up) and after:
- responses: every request must end with a final response from the server, an image or a rejection (UNAVAILABLE:
  the waiting queue was full); a client-side timeout, a cancel or any other error fails the soak;
- memory: the resident set summed over the tritonserver process and its children (the Python-backend stubs, one
  per model instance), sampled before, every `sample_interval_s` during, and after. The bound is on its anonymous
  part (RssAnon: heaps, the model runtimes' memory pools), where a leak shows: growth after - before must stay
  within ANON_GROWTH_BOUND_MIB. VmRSS and Pss are reported beside it but not bounded, because their file-backed
  part moves with the page cache of the whole machine (a soak here saw VmRSS fall 200 MiB while RssAnon moved
  0.4 MiB);
- shared memory: the /dev/shm/triton_python_backend_shm* regions of this server (named on its stubs' command
  lines, or mapped by the server or a stub) must be the same set before and after, and so must the stub processes
  (a stub that died and was restarted leaves a new region and a new pid);
- the engine: the `synerdiff_waiting_requests` and `synerdiff_running_requests` gauges are back to 0.

Invariants: the workload is deterministic for a seed (perf.workload); exactly one record per arrival
(perf.loadgen); the verdict lists every failed check and the JSON holds every number it was taken from. Nothing
here asserts speed: the rate is derived from what this machine just did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from perf.loadgen import replay, server_version
from perf.report import RequestRecord, summarize_records, summary_line
from perf.server import Ports, TritonServer, child_pids, free_ports, metric_value, shm_regions_of
from perf.workload import Arrival, RequestMix, poisson_arrivals
from scheduler_backend.policies import POLICIES

ROOT = Path(__file__).resolve().parents[1]
KIB = 1024
SHM_PREFIX = "triton_python_backend_shm"

# The stated bound on the growth of the server's anonymous resident memory over a soak, after the warm-up
# (docs/perf.md, "Soak", has the measurements it was chosen from).
ANON_GROWTH_BOUND_MIB = 32.0

# The soak's mix: sizes from 32 to 256 px a side (tiny's maximum; its VAE factor is 2, so 256 x 64 is a 128 x 32
# latent), steps, 3 in 4 guided, both samplers. Areas stay at or below 128 x 128: on `tiny` a warm-up burst with
# 256 x 256 requests in it took the server's summed VmRSS to 10.9 GiB and its capacity to 0.1 img/s.
SOAK_MIX = RequestMix(steps=(6, 10, 16, 24), guided_fraction=0.75,
                      sizes=((32, 32), (64, 64), (64, 128), (128, 64), (96, 96), (128, 128), (256, 64)),
                      samplers=("ddim", "euler"))
DEFAULT_REQUESTS, DEFAULT_LOAD, DEFAULT_WARM_UP_REQUESTS, DEFAULT_LARGEST_REQUESTS = 300, 0.9, 16, 16
DEFAULT_TIMEOUT_S, SETTLE_TIMEOUT_S = 600.0, 30.0
FINAL_OUTCOMES = ("image", "rejected")  # answers from the server that end a request as the contract says
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


# -- what is measured ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySample:
    """Memory of a server's process tree at one moment (KiB, summed over the processes)."""

    time_s: float  # on time.monotonic()
    pids: tuple[int, ...]  # the server first, then its children
    rss_kib: int  # Rss (= VmRSS): shared pages count once in every process that maps them
    pss_kib: int  # proportional set size: shared pages split between the processes that map them
    anon_kib: int  # anonymous memory (heap): where a leak in a process shows
    rss_kib_by_pid: tuple[int, ...] = ()  # each process's part of rss_kib, in the order of `pids`
    anon_kib_by_pid: tuple[int, ...] = ()  # each process's part of anon_kib
    labels: tuple[str, ...] = ()  # each process's process_label


def _kib_fields(path: Path, names: Sequence[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            values[key] = int(rest.split()[0])
    return values


def process_memory_kib(pid: int) -> tuple[int, int, int]:
    """(Rss, Pss, Anonymous) of one process in KiB, from /proc/<pid>/smaps_rollup (VmRSS, VmRSS, RssAnon from
    /proc/<pid>/status where smaps_rollup cannot be read). (0, 0, 0) for a process that is gone."""
    try:
        rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup"), ("Rss", "Pss", "Anonymous"))
        return rollup["Rss"], rollup["Pss"], rollup["Anonymous"]
    except (OSError, KeyError):
        pass
    try:
        status = _kib_fields(Path(f"/proc/{pid}/status"), ("VmRSS", "RssAnon"))
        return status.get("VmRSS", 0), status.get("VmRSS", 0), status.get("RssAnon", 0)
    except OSError:
        return 0, 0, 0


def process_tree(pid: int) -> tuple[int, ...]:
    """The server and its children (the stubs)."""
    return (pid, *child_pids(pid))


def process_label(pid: int) -> str:
    """"tritonserver", a stub's model name (from the model.py path on its command line), or the program name."""
    try:
        args = [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return "gone"
    model = next((Path(arg).parents[1].name for arg in args[1:2] if arg.endswith("model.py")), None)
    return model or (Path(args[0]).name if args else "?")


def sample_memory(pid: int) -> MemorySample:
    pids = process_tree(pid)
    per_process = [process_memory_kib(p) for p in pids]
    rss, pss, anon = (sum(values) for values in zip(*per_process))
    return MemorySample(time.monotonic(), pids, rss, pss, anon, tuple(values[0] for values in per_process),
                        tuple(values[2] for values in per_process), tuple(process_label(p) for p in pids))


def shm_regions(pid: int) -> dict[str, int]:
    """This server's Python-backend shared-memory regions that exist in /dev/shm, by name -> size in bytes: those
    named on its stubs' command lines and any /dev/shm/triton_python_backend_shm* the server or a stub maps."""
    names: set[str] = set()
    for process in process_tree(pid):
        names.update(shm_regions_of(process))
        try:
            maps = Path(f"/proc/{process}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():  # address perms offset device inode [path]
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith(f"/dev/shm/{SHM_PREFIX}"):
                names.add(parts[5].removeprefix("/dev/shm/").removesuffix(" (deleted)"))
    sizes = {}
    for name in sorted(names):
        try:
            sizes[name] = Path("/dev/shm", name).stat().st_size
        except OSError:
            pass  # named on a command line but already removed
    return sizes


class MemorySampler:
    """Samples a server's memory every `interval_s` on a thread, from start() until stop()."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(sample_memory(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the server ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The server a soak runs against: where to send requests, and (when known) its pid and metrics URL."""

    grpc_url: str
    pid: int | None = None
    metrics_url: str | None = None


def find_server(grpc_port: int) -> Target | None:
    """The tritonserver on this machine listening on `grpc_port` (perf.server.server_command's flags), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [arg.decode() for arg in (entry / "cmdline").read_bytes().split(b"\0") if arg]
        except OSError:
            continue
        if args and args[0].endswith("tritonserver") and f"--grpc-port={grpc_port}" in args:
            metrics = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--metrics-port=")), None)
            return Target(f"127.0.0.1:{grpc_port}", int(entry.name),
                          f"http://127.0.0.1:{metrics}/metrics" if metrics else None)
    return None


def start_server(preset: str, policy: str, build_dir: Path, log_path: Path) -> TritonServer:
    """Export `preset` (if not yet), measure its profile (if not yet), render it for `policy`, start a server."""
    from export.exporter import export_models
    from export.render import ServingSettings, render_repository
    from perf.profile import ensure_profile

    settings = ServingSettings(policy=policy)
    model_dir = export_models(preset, build_dir / "models" / preset, seed=0, force=False, show_progress=False,
                              log=lambda _: None)
    profile = ensure_profile(model_dir, unet_threads=settings.unet_threads, vae_threads=settings.vae_threads,
                             log=lambda _: None)
    repository = render_repository(model_dir, build_dir / "soak-repositories" / preset / policy,
                                   settings=replace(settings, profile=str(profile)))
    return TritonServer(repository, Ports(*free_ports(3)), log_path).start()


def target_of(server: TritonServer) -> Target:
    assert server.process is not None, "the server is not running"
    return Target(server.ports.grpc_url, server.process.pid, server.ports.metrics_url)


# -- the soak -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakPlan:
    requests: int = DEFAULT_REQUESTS
    load: float = DEFAULT_LOAD  # fraction of the measured capacity; ignored when rate_per_s is set
    rate_per_s: float | None = None
    warm_up_requests: int = DEFAULT_WARM_UP_REQUESTS
    largest_requests: int = DEFAULT_LARGEST_REQUESTS  # the running-request bound of the server
    seed: int = 1
    mix: RequestMix = SOAK_MIX
    timeout_s: float = DEFAULT_TIMEOUT_S  # per request, client side
    sample_interval_s: float = 1.0
    anon_growth_bound_mib: float = ANON_GROWTH_BOUND_MIB


@dataclass(frozen=True)
class ServerState:
    """The server at one moment: its memory, its shared-memory regions, the engine's gauges."""

    memory: MemorySample | None
    shm_regions: dict[str, int]  # name -> bytes
    waiting_requests: float | None
    running_requests: float | None

    @property
    def stub_pids(self) -> tuple[int, ...]:
        return self.memory.pids[1:] if self.memory else ()


@dataclass(frozen=True)
class SoakResult:
    plan: SoakPlan
    target: Target
    server_version: str
    capacity_per_s: float  # images per second of the burst of the mix
    rate_per_s: float
    warm_up: tuple[RequestRecord, ...]
    arrivals: tuple[Arrival, ...]
    records: tuple[RequestRecord, ...]
    before: ServerState
    after: ServerState
    during: tuple[MemorySample, ...]
    wall_s: float
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def final_responses(self) -> int:
        return sum(r.outcome in FINAL_OUTCOMES for r in self.records)

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.outcome] = counts.get(record.outcome, 0) + 1
        return counts

    def growth_mib(self, quantity: str) -> float | None:
        """after - before of one MemorySample quantity ("rss_kib", "pss_kib", "anon_kib"), in MiB."""
        if self.before.memory is None or self.after.memory is None:
            return None
        return (getattr(self.after.memory, quantity) - getattr(self.before.memory, quantity)) / KIB

    @property
    def anon_growth_mib(self) -> float | None:
        return self.growth_mib("anon_kib")

    def _peak_mib(self, quantity: str) -> float | None:
        samples = [*self.during, *(state.memory for state in (self.before, self.after) if state.memory)]
        return max(getattr(sample, quantity) for sample in samples) / KIB if samples else None

    @property
    def peak_rss_mib(self) -> float | None:
        return self._peak_mib("rss_kib")

    @property
    def peak_anon_mib(self) -> float | None:
        return self._peak_mib("anon_kib")


def state_of(target: Target) -> ServerState:
    metrics = target.metrics_url
    return ServerState(
        sample_memory(target.pid) if target.pid else None,
        shm_regions(target.pid) if target.pid else {},
        metric_value(metrics, "synerdiff_waiting_requests") if metrics else None,
        metric_value(metrics, "synerdiff_running_requests") if metrics else None)


def settled_state(target: Target, timeout_s: float = SETTLE_TIMEOUT_S) -> ServerState:
    """The server's state once the engine is idle (both gauges 0), or after `timeout_s` when it does not get there.
    A second's pause first lets the stubs free what the last responses held."""
    time.sleep(1.0)
    deadline = time.monotonic() + timeout_s
    state = state_of(target)
    while time.monotonic() < deadline and (state.waiting_requests or state.running_requests):
        time.sleep(0.5)
        state = state_of(target)
    return state


def burst(mix: RequestMix, count: int, seed: int) -> list[Arrival]:
    """`count` requests of the mix, all at time 0."""
    rng = random.Random(seed)
    return [mix.draw(rng, 0.0) for _ in range(count)]


def largest_burst(mix: RequestMix, count: int, seed: int) -> list[Arrival]:
    """`count` guided requests at the mix's largest image area and its fewest steps, all at time 0: the largest
    UNet batches the mix can make, so the model runtimes' memory pools reach their high-water mark."""
    height, width = max(mix.sizes, key=lambda size: size[0] * size[1]) if mix.sizes else (None, None)
    return [Arrival(0.0, min(mix.steps), mix.guidance_scale, seed=seed + i, height=height, width=width)
            for i in range(count)]


def capacity_of(records: Sequence[RequestRecord]) -> float:
    """Images per second of a burst sent at time 0: images / the time the last one finished."""
    finished = [r.finished_s for r in records if r.outcome == "image" and r.finished_s]
    return len(finished) / max(finished) if finished else 0.0


def failures_of(result: SoakResult) -> tuple[str, ...]:
    """Every check of the module docstring that the result fails, as a sentence each."""
    plan, failures = result.plan, []
    if len(result.records) != plan.requests:
        failures.append(f"{len(result.records)} records for {plan.requests} requests")
    if result.final_responses != plan.requests:
        failures.append(f"{result.final_responses}/{plan.requests} requests ended with an image or a rejection "
                        f"(outcomes {result.outcomes()})")
    growth = result.anon_growth_mib
    if growth is not None and growth > plan.anon_growth_bound_mib:
        failures.append(f"anonymous resident memory grew by {growth:.1f} MiB, more than the bound "
                        f"{plan.anon_growth_bound_mib:g} MiB")
    before, after = result.before, result.after
    if result.target.pid is not None:
        if set(after.shm_regions) != set(before.shm_regions):
            failures.append(f"/dev/shm regions changed: {len(before.shm_regions)} before, "
                            f"{len(after.shm_regions)} after")
        if after.stub_pids != before.stub_pids:
            failures.append(f"stub processes changed: {before.stub_pids} before, {after.stub_pids} after")
    for name, value in (("waiting", after.waiting_requests), ("running", after.running_requests)):
        if value:
            failures.append(f"synerdiff_{name}_requests is {value:g} after the soak, not 0")
    return tuple(failures)


def soak(target: Target, plan: SoakPlan, log: Any = print) -> SoakResult:
    """Warm-up burst (capacity), then the Poisson replay with memory sampled throughout; see the module docstring."""
    started_s = time.perf_counter()
    version = asyncio.run(server_version(target.grpc_url))
    if version is None:
        raise ConnectionError(f"no ready server at {target.grpc_url}")
    largest = asyncio.run(replay(target.grpc_url, largest_burst(plan.mix, plan.largest_requests, plan.seed + 20_000),
                                 timeout_s=plan.timeout_s))
    log(f"soak: burst of {len(largest)} at the largest size: {[r.outcome for r in largest].count('image')} images")
    warm_up = asyncio.run(replay(target.grpc_url, burst(plan.mix, plan.warm_up_requests, plan.seed + 10_000),
                                 timeout_s=plan.timeout_s))
    capacity = capacity_of(warm_up)
    if plan.rate_per_s is None and capacity <= 0:
        raise RuntimeError(f"warm-up burst served no image: {[r.outcome for r in warm_up]}")
    rate = plan.rate_per_s if plan.rate_per_s is not None else plan.load * capacity
    log(f"soak: warm-up burst of {len(warm_up)}: {capacity:.3f} img/s; replaying {plan.requests} requests "
        f"at {rate:.3f} req/s (Poisson)")
    before = settled_state(target)
    arrivals = poisson_arrivals(rate, plan.requests, plan.seed, plan.mix)
    if target.pid is not None:
        with MemorySampler(target.pid, plan.sample_interval_s) as sampler:
            records = asyncio.run(replay(target.grpc_url, arrivals, timeout_s=plan.timeout_s))
        during = tuple(sampler.samples)
    else:
        records, during = asyncio.run(replay(target.grpc_url, arrivals, timeout_s=plan.timeout_s)), ()
    after = settled_state(target)
    result = SoakResult(plan, target, version, capacity, rate, tuple(warm_up), tuple(arrivals), tuple(records),
                        before, after, during, time.perf_counter() - started_s)
    return replace(result, failures=failures_of(result))


# -- the report ----------------------------------------------------------------------------------------------------


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / KIB, 1)


def by_process(sample: MemorySample, kib_by_pid: Sequence[int]) -> dict[str, float | None]:
    """{"<label>:<pid>": MiB} for one of a sample's per-process quantities."""
    return {f"{label}:{pid}": _mib(kib) for label, pid, kib in zip(sample.labels, sample.pids, kib_by_pid)}


def state_json(state: ServerState) -> dict[str, Any]:
    memory = state.memory
    return {"rss_mib": _mib(memory.rss_kib) if memory else None, "pss_mib": _mib(memory.pss_kib) if memory else None,
            "anon_mib": _mib(memory.anon_kib) if memory else None, "pids": list(memory.pids) if memory else [],
            "rss_mib_by_process": by_process(memory, memory.rss_kib_by_pid) if memory else {},
            "anon_mib_by_process": by_process(memory, memory.anon_kib_by_pid) if memory else {},
            "shm_regions": len(state.shm_regions), "shm_bytes": sum(state.shm_regions.values()),
            "shm_names": sorted(state.shm_regions), "waiting_requests": state.waiting_requests,
            "running_requests": state.running_requests}


def result_json(result: SoakResult) -> dict[str, Any]:
    plan, summary = result.plan, summarize_records(result.records)
    start = result.during[0].time_s if result.during else 0.0
    return {
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "passed": result.passed, "failures": list(result.failures),
        "plan": {**asdict(plan), "mix": asdict(plan.mix)},
        "server": {"grpc_url": result.target.grpc_url, "pid": result.target.pid, "version": result.server_version},
        "capacity_per_s": result.capacity_per_s, "rate_per_s": result.rate_per_s, "wall_s": result.wall_s,
        "requests": len(result.records), "final_responses": result.final_responses, "outcomes": result.outcomes(),
        "summary": asdict(summary),
        "memory": {"anon_growth_bound_mib": plan.anon_growth_bound_mib,
                   "growth_mib": {name: result.growth_mib(f"{name}_kib") for name in ("rss", "pss", "anon")},
                   "peak_rss_mib": result.peak_rss_mib, "peak_anon_mib": result.peak_anon_mib,
                   "before": state_json(result.before),
                   "after": state_json(result.after),
                   "during": [{"t_s": round(s.time_s - start, 2), "rss_mib": _mib(s.rss_kib),
                               "pss_mib": _mib(s.pss_kib), "anon_mib": _mib(s.anon_kib),
                               "anon_mib_by_process": by_process(s, s.anon_kib_by_pid)} for s in result.during]},
        "warm_up": [asdict(r) for r in result.warm_up],
        "records": [{**asdict(a), **asdict(r)} for a, r in zip(result.arrivals, result.records)],
    }


def summary_text(result: SoakResult) -> str:
    before, after, plan = result.before, result.after, result.plan
    served = f"soak: {result.final_responses}/{len(result.records)} final responses (outcomes {result.outcomes()})"
    lines = [f"{served} at {result.rate_per_s:.3f} req/s = {result.rate_per_s / result.capacity_per_s:.0%} of the "
             f"warm-up's {result.capacity_per_s:.3f} img/s; {summary_line(summarize_records(result.records))}; "
             f"{result.wall_s:.0f} s" if result.capacity_per_s else served]
    if before.memory and after.memory:
        old, new = before.memory, after.memory
        lines.append(f"memory (server + {len(after.stub_pids)} stubs, summed): anonymous {old.anon_kib / KIB:.1f} MiB "
                     f"after warm-up, peak {result.peak_anon_mib:.1f} MiB, {new.anon_kib / KIB:.1f} MiB after: growth "
                     f"{result.anon_growth_mib:+.1f} MiB (bound {plan.anon_growth_bound_mib:g} MiB); VmRSS "
                     f"{old.rss_kib / KIB:.1f} -> {new.rss_kib / KIB:.1f} MiB (peak {result.peak_rss_mib:.1f}), "
                     f"Pss {old.pss_kib / KIB:.1f} -> {new.pss_kib / KIB:.1f} MiB")
        same = set(before.shm_regions) == set(after.shm_regions)
        lines.append(f"/dev/shm regions: {len(before.shm_regions)} before "
                     f"({sum(before.shm_regions.values()) / 2**20:.0f} MiB), {len(after.shm_regions)} after "
                     f"({sum(after.shm_regions.values()) / 2**20:.0f} MiB), {'same set' if same else 'different sets'}")
    else:
        lines.append("memory and /dev/shm not measured (server process not found on this machine)")
    lines.append("PASS" if result.passed else "FAIL: " + "; ".join(result.failures))
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one on --preset)")
    parser.add_argument("--pid", type=int, help="with --url: the tritonserver's pid (default: found by its gRPC port)")
    parser.add_argument("--preset", default="tiny", help="model preset to serve when no --url is given")
    parser.add_argument("--policy", choices=POLICIES, default="synerdiff", help="serving policy when no --url is given")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--load", type=float, default=DEFAULT_LOAD,
                        help="arrival rate as a fraction of the capacity the warm-up burst measured")
    parser.add_argument("--rate", type=float, help="arrival rate in requests per second (overrides --load)")
    parser.add_argument("--warm-up-requests", type=int, default=DEFAULT_WARM_UP_REQUESTS,
                        help="the burst of the mix that warms up and measures capacity")
    parser.add_argument("--largest-requests", type=int, default=DEFAULT_LARGEST_REQUESTS,
                        help="the burst at the mix's largest size sent first (the server's running-request bound)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per request, seconds")
    parser.add_argument("--anon-growth-bound-mib", type=float, default=ANON_GROWTH_BOUND_MIB,
                        help="bound on the growth of the server's anonymous resident memory over the soak")
    parser.add_argument("--out", type=Path, help="the JSON report (default build/soak/<timestamp>.json)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")


def run(args: argparse.Namespace) -> int:
    plan = SoakPlan(requests=args.requests, load=args.load, rate_per_s=args.rate,
                    warm_up_requests=args.warm_up_requests, largest_requests=args.largest_requests, seed=args.seed,
                    timeout_s=args.timeout, anon_growth_bound_mib=args.anon_growth_bound_mib)
    out = args.out or args.build_dir / "soak" / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.url:
            host, _, port = args.url.rpartition(":")
            found = find_server(int(port)) if host in ("127.0.0.1", "localhost") else None  # only a local server
            target = (Target(args.url, args.pid, found.metrics_url if found else None) if args.pid
                      else found or Target(args.url))
        else:
            server = start_server(args.preset, args.policy, args.build_dir, out.with_suffix(".server.log"))
            target = target_of(server)
        result = soak(target, plan)
    except ConnectionError as error:
        print(f"synerdiff soak: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RuntimeError as error:  # the server did not start, or the warm-up served no image
        print(f"synerdiff soak: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if server is not None:
            server.stop()
    out.write_text(json.dumps(result_json(result), indent=1) + "\n")
    print(summary_text(result))
    print(f"wrote {out}")
    return EXIT_OK if result.passed else EXIT_FAILED


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
