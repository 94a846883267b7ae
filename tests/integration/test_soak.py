"""The soak's CI variant on the real server (perf.soak; the full 300-request run and its numbers: docs/perf.md,
"Soak"): 60 requests of mixed sizes, steps, guidance (some without CFG) and samplers at 90 % of the capacity the
warm-up measured. Every request gets exactly one final response, the server's anonymous memory grows by no more
than the stated bound, and its shared-memory regions and stubs are the same before and after."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.render import ServingSettings
from perf.soak import ANON_GROWTH_BOUND_MIB, SoakPlan, soak, target_of
from perf.workload import RequestMix
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration

REQUESTS = 60  # fewer than the 64 waiting + 16 running places, so none can be rejected for a full queue
CI_MIX = RequestMix(steps=(2, 4, 6), guided_fraction=0.75,
                    sizes=((32, 32), (64, 64), (64, 96), (96, 64), (32, 128)), samplers=("ddim", "euler"))


def test_soak_every_request_answered_once_memory_bounded_no_shm_growth(tiny_models: Path) -> None:
    server = start_server(tiny_models, "soak", ServingSettings())  # the default policy, synerdiff
    try:
        result = soak(target_of(server), SoakPlan(requests=REQUESTS, mix=CI_MIX, warm_up_requests=8, seed=3),
                      log=lambda _: None)
    finally:
        server.stop()

    arrivals, records = result.arrivals, result.records
    assert len(arrivals) == len(records) == REQUESTS
    assert len({(a.height, a.width) for a in arrivals}) >= 4 and {a.guidance_scale for a in arrivals} == {1.0, 7.5}
    assert [r.outcome for r in records] == ["image"] * REQUESTS, result.outcomes()
    for arrival, record in zip(arrivals, records):
        assert (record.arrival_s, record.num_steps) == (arrival.time_s, arrival.num_steps)  # one record per arrival
        assert record.finished_s is not None and record.first_progress_s is not None
        assert arrival.time_s <= record.first_progress_s <= record.finished_s

    before, after = result.before, result.after
    assert before.memory is not None and after.memory is not None
    assert result.anon_growth_mib is not None and result.anon_growth_mib <= ANON_GROWTH_BOUND_MIB, result.failures
    assert len(result.during) >= 2  # sampled while the requests ran
    stubs = before.stub_pids
    assert len(stubs) >= 7 and after.stub_pids == stubs  # no stub died or was restarted
    assert len(before.shm_regions) == len(stubs)  # one region per stub, each found
    assert set(after.shm_regions) == set(before.shm_regions)
    assert (after.waiting_requests, after.running_requests) == (0.0, 0.0)
    assert result.failures == () and result.passed
