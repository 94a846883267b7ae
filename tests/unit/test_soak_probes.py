"""perf.soak without a server: the memory and shared-memory probes see a leak in a process tree, and the verdict
fails on each kind of leak or lost response."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from perf.report import RequestRecord
from perf.soak import (ANON_GROWTH_BOUND_MIB, KIB, SOAK_MIX, MemorySample, ServerState, SoakPlan, SoakResult,
                       Target, burst, capacity_of, failures_of, largest_burst, sample_memory, shm_regions)
from perf.workload import Arrival

ALLOCATE_MIB = 64
# A child that, on each line of stdin, touches ALLOCATE_MIB more MiB of heap and keeps it (a leak).
LEAKY_CHILD = f"""
import sys
kept = []
for _ in sys.stdin:
    kept.append(b"x" * ({ALLOCATE_MIB} * 2**20))
    print("allocated", flush=True)
"""
# A child that maps a /dev/shm file, named on its command line like a Python-backend stub's, or only in its
# environment (then only the mapping tells whose it is).
STUB_LIKE_CHILD = """
import mmap, os, sys
fd = os.open("/dev/shm/" + os.environ["REGION"], os.O_RDWR)
region = mmap.mmap(fd, 0)
print("mapped", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def leaky_child() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-c", LEAKY_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as child:
        yield child
        child.kill()


def test_sample_memory_sums_the_tree_and_sees_a_child_leak(leaky_child: subprocess.Popen[str]) -> None:
    before = sample_memory(os.getpid())
    assert leaky_child.pid in before.pids and before.pids[0] == os.getpid()
    assert before.rss_kib == sum(before.rss_kib_by_pid) and before.anon_kib == sum(before.anon_kib_by_pid)
    assert 0 < before.anon_kib <= before.rss_kib and 0 < before.pss_kib <= before.rss_kib
    assert leaky_child.stdin is not None and leaky_child.stdout is not None
    leaky_child.stdin.write("go\n")
    leaky_child.stdin.flush()
    assert leaky_child.stdout.readline().strip() == "allocated"
    after = sample_memory(os.getpid())
    child_growth_kib = (after.anon_kib_by_pid[after.pids.index(leaky_child.pid)]
                        - before.anon_kib_by_pid[before.pids.index(leaky_child.pid)])
    assert child_growth_kib >= (ALLOCATE_MIB - 1) * KIB
    assert after.anon_kib - before.anon_kib >= (ALLOCATE_MIB - 4) * KIB  # seen in the tree's sum too


@pytest.mark.parametrize("named_on_command_line", [True, False])
def test_shm_regions_finds_a_stubs_region_by_its_command_line_or_its_mapping(named_on_command_line: bool) -> None:
    name = f"triton_python_backend_shm_region_soaktest-{uuid.uuid4()}"
    path = Path("/dev/shm", name)
    path.write_bytes(b"\0" * mmap.PAGESIZE * 4)
    try:
        arguments = [name] if named_on_command_line else []
        with subprocess.Popen([sys.executable, "-c", STUB_LIKE_CHILD, *arguments], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "REGION": name}) as child:
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "mapped"
                assert shm_regions(os.getpid()).get(name) == mmap.PAGESIZE * 4
                path.unlink()
                assert name not in shm_regions(os.getpid())  # removed: no longer counted
            finally:
                child.kill()
    finally:
        path.unlink(missing_ok=True)


def record(outcome: str) -> RequestRecord:
    return RequestRecord(0.0, 6, True, 0.1, 1.0, outcome)


def state(anon_mib: float, regions: tuple[str, ...] = ("r1", "r2"), stubs: tuple[int, ...] = (11, 12),
          waiting: float = 0.0, running: float = 0.0) -> ServerState:
    kib = int(anon_mib * KIB)
    memory = MemorySample(0.0, (10, *stubs), 2 * kib, kib, kib)
    return ServerState(memory, {name: 2**20 for name in regions}, waiting, running)


def result(outcomes: list[str], before: ServerState, after: ServerState) -> SoakResult:
    plan = SoakPlan(requests=len(outcomes))
    return SoakResult(plan, Target("127.0.0.1:1", 10, None), "2.51.0", 1.0, 0.9, (), (), tuple(map(record, outcomes)),
                      before, after, (), 1.0)


def test_a_clean_soak_passes_with_rejections_counted_as_final_responses() -> None:
    clean = result(["image", "rejected", "image"], state(500), state(500 + ANON_GROWTH_BOUND_MIB - 1))
    assert failures_of(clean) == ()
    assert clean.final_responses == 3 and clean.outcomes() == {"image": 2, "rejected": 1}
    assert clean.anon_growth_mib == pytest.approx(ANON_GROWTH_BOUND_MIB - 1, abs=0.01)


@pytest.mark.parametrize("outcomes, after, expected", [
    (["image", "error"], state(500), "1/2 requests ended with an image or a rejection"),
    (["image", "cancelled"], state(500), "1/2 requests"),
    (["image"], state(500 + ANON_GROWTH_BOUND_MIB + 1), "anonymous resident memory grew"),
    (["image"], state(500, regions=("r1", "r2", "r3")), "/dev/shm regions changed"),
    (["image"], state(500, regions=("r1", "r9")), "/dev/shm regions changed"),
    (["image"], state(500, stubs=(11, 13)), "stub processes changed"),
    (["image"], state(500, running=1.0), "synerdiff_running_requests is 1"),
    (["image"], state(500, waiting=2.0), "synerdiff_waiting_requests is 2"),
])
def test_each_kind_of_leak_or_lost_response_fails_the_soak(outcomes: list[str], after: ServerState,
                                                           expected: str) -> None:
    failures = failures_of(result(outcomes, state(500), after))
    assert len(failures) == 1 and expected in failures[0], failures


def test_records_missing_for_some_arrivals_fail_the_soak() -> None:
    short = replace(result(["image", "image"], state(500), state(500)), plan=SoakPlan(requests=3))
    assert any("2 records for 3 requests" in failure for failure in failures_of(short))


def test_bursts_and_capacity() -> None:
    largest = largest_burst(SOAK_MIX, 16, seed=5)
    assert len(largest) == 16 and {(a.height, a.width) for a in largest} == {(128, 128)}  # largest area, first
    assert all(a.time_s == 0.0 and a.guidance_scale > 1.0 and a.num_steps == min(SOAK_MIX.steps) for a in largest)
    mixed = burst(SOAK_MIX, 40, seed=5)
    assert mixed == burst(SOAK_MIX, 40, seed=5) and len({(a.height, a.width) for a in mixed}) > 3
    assert all(a.time_s == 0.0 for a in mixed)
    records = [RequestRecord(0.0, 6, True, 0.1, finished, outcome)
               for finished, outcome in ((1.0, "image"), (2.0, "image"), (4.0, "image"), (5.0, "rejected"))]
    assert capacity_of(records) == pytest.approx(3 / 4.0)
    assert capacity_of([RequestRecord(0.0, 6, True, None, 1.0, "error")]) == 0.0
    assert Arrival(0.0, 6, 7.5) not in largest
