"""The discrete-event simulator (perf/simulator.py), its workloads (perf/workload.py), the summaries and
bounds (perf/report.py) and the table of `synerdiff simulate` (perf/simulate_cli.py), on a small
hand-made latency profile (every cost below is chosen so the expected numbers can be worked out by hand)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from perf import simulate_cli
from perf.report import OUTCOMES, hardware_bounds
from perf.simulator import IterationClock, at_simulated_size, simulate, simulation_spec
from perf.workload import Arrival, RequestMix, bursty_arrivals, poisson_arrivals
from scheduler_backend.engine import ChunkWork, StepReport, UnetWork
from scheduler_backend.limits import Limits
from scheduler_backend.policies import POLICIES, PolicySettings, make_policy
from scheduler_backend.profile import Contention, LatencyProfile, overlap
from scheduler_backend.vae_chunks import ChunkingSpec, StageShapes

# UNet: 0.1 s for 1 row, 0.15 s for 2, ... peak 20 rows/s at 8 rows. A whole decode costs 0.2 s, as do its
# two stages together. While a UNet call and a VAE chunk run together the UNet is 1.5x and the VAE 2x slower
# (1.2x and 1.1x beside stage0).
PROFILE = LatencyProfile(
    latent_hw=(4, 4),  # the simulator's latent size: area ratio 1
    unet_rows=(1, 2, 4, 8),
    unet_seconds=(0.1, 0.15, 0.25, 0.4),
    vae_chunk_seconds={"whole": 0.2, "stage0": 0.08, "stage1": 0.12, "tile": 0.06},
    contention={"*": Contention(1.5, 2.0), "stage0": Contention(1.2, 1.1)},
)
STAGES = StageShapes(channels=(16, 3), scales=(2, 8))  # latent [4, h, w] -> [16, 2h, 2w] -> image [3, 8h, 8w]
DECODE_S = 0.2
MIX = RequestMix(steps=(4, 6, 8), guided_fraction=0.5)
LATENT = (4, 4, 4)  # (channels, h, w) of a simulated request


def small_load(seed: int = 3, count: int = 24, rate: float = 2.0) -> list[Arrival]:
    return poisson_arrivals(rate, count, seed, MIX)


def rows_of(arrival: Arrival) -> int:
    return 2 if arrival.guidance_scale > 1 else 1


def uses_skip_cfg(policy: str) -> bool:
    return make_policy(policy, Limits(simulation_spec(STAGES)), PROFILE).skip_cfg is not None


# -- determinism -------------------------------------------------------------------------------------


def test_same_seed_same_records_and_another_seed_other_arrivals() -> None:
    arrivals = small_load(seed=3)
    assert arrivals == small_load(seed=3)
    other = small_load(seed=4)
    assert [a.time_s for a in other] != [a.time_s for a in arrivals]
    first = simulate("synerdiff", arrivals, PROFILE, stages=STAGES)
    second = simulate("synerdiff", arrivals, PROFILE, stages=STAGES)
    assert first.records == second.records
    assert (first.iterations, first.unet_rows, first.skipped_cfg_rows, first.end_s) == \
        (second.iterations, second.unet_rows, second.skipped_cfg_rows, second.end_s)
    assert simulate("synerdiff", other, PROFILE, stages=STAGES).records != first.records


def test_noise_changes_the_times_and_stays_deterministic() -> None:
    arrivals = small_load(seed=5, count=12)
    quiet = simulate("continuous", arrivals, PROFILE, stages=STAGES)
    assert quiet.records == simulate("continuous", arrivals, PROFILE, stages=STAGES, noise=0.0, seed=9).records
    noisy = simulate("continuous", arrivals, PROFILE, stages=STAGES, noise=0.3, seed=1)
    assert noisy.records == simulate("continuous", arrivals, PROFILE, stages=STAGES, noise=0.3, seed=1).records
    assert [r.finished_s for r in noisy.records] != [r.finished_s for r in quiet.records]
    assert [r.finished_s for r in noisy.records] != \
        [r.finished_s for r in simulate("continuous", arrivals, PROFILE, stages=STAGES, noise=0.3, seed=2).records]
    assert all(r.outcome == "image" for r in noisy.records)


# -- one record per arrival, every policy ----------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("chunking", ["stages", "whole"])
def test_every_arrival_gets_exactly_one_record(policy: str, chunking: str) -> None:
    arrivals = small_load(seed=11, count=20, rate=3.0)  # above the bound: queues build up
    if chunking == "stages":
        result = simulate(policy, arrivals, PROFILE, stages=STAGES)
    else:  # no stage graphs: the mechanisms that chunk must be told to decode whole
        result = simulate(policy, arrivals, PROFILE, settings=PolicySettings(vae_chunking=ChunkingSpec("whole")))
    assert result.policy == policy
    assert len(result.records) == len(arrivals)
    for arrival, record in zip(arrivals, result.records):
        assert (record.arrival_s, record.num_steps, record.guided) == \
            (arrival.time_s, arrival.num_steps, arrival.guidance_scale > 1)
        assert record.outcome in OUTCOMES
    assert all(r.outcome == "image" for r in result.records)
    assert result.end_s == pytest.approx(max(r.finished_s for r in result.records))


def test_a_bounded_queue_rejects_and_still_records_every_arrival() -> None:
    burst = [Arrival(0.0, 6, 7.5) for _ in range(10)]
    result = simulate("continuous", burst, PROFILE, stages=STAGES, max_waiting_requests=3, max_running_requests=2)
    outcomes = [r.outcome for r in result.records]
    assert len(outcomes) == 10 and "rejected" in outcomes and "image" in outcomes
    assert all(r.finished_s is None and r.latency_s is None for r in result.records if r.outcome == "rejected")


# -- service times -----------------------------------------------------------------------------------


def service_s(arrival: Arrival, rows: int | None = None) -> float:
    """A request alone: every step one UNet call of its rows, then the decode."""
    return arrival.num_steps * PROFILE.unet_call_seconds(rows or rows_of(arrival)) + DECODE_S


@pytest.mark.parametrize("policy", POLICIES)
def test_alone_a_request_takes_its_service_time(policy: str) -> None:
    arrivals = [Arrival(10.0 * i, steps, guidance) for i, (steps, guidance) in
                enumerate([(4, 7.5), (6, 1.0), (8, 7.5), (5, 1.0)])]
    # 4 x 0.15 + 0.2, 6 x 0.1 + 0.2, 8 x 0.15 + 0.2, 5 x 0.1 + 0.2
    assert [service_s(a) for a in arrivals] == pytest.approx([0.8, 0.8, 1.4, 0.7])
    result = simulate(policy, arrivals, PROFILE, stages=STAGES)
    wait_s = PolicySettings().static_max_queue_delay_s if policy == "static" else 0.0  # the batcher's delay
    for arrival, record in zip(arrivals, result.records):
        assert record.outcome == "image"
        assert record.latency_s == pytest.approx(service_s(arrival) + wait_s)


@pytest.mark.parametrize("policy", POLICIES)
def test_with_ample_capacity_all_are_served_no_faster_than_alone(policy: str) -> None:
    arrivals = small_load(seed=7, count=16, rate=0.4)  # about a quarter of the bound
    result = simulate(policy, arrivals, PROFILE, stages=STAGES)
    for arrival, record in zip(arrivals, result.records):
        assert record.outcome == "image"
        # Skip-CFG may run a guided request's step on one row; nothing runs faster than alone otherwise
        rows = 1 if uses_skip_cfg(policy) else rows_of(arrival)
        assert record.latency_s >= service_s(arrival, rows) - 1e-9
    summary = simulate_cli.summarize([result])
    assert summary.rejected == 0 and summary.p99_s >= summary.p50_s > 0


# -- workloads ---------------------------------------------------------------------------------------


def test_poisson_arrivals_have_the_asked_mean_rate() -> None:
    arrivals = poisson_arrivals(5.0, 4000, seed=1)
    times = [a.time_s for a in arrivals]
    assert times == sorted(times) and times[0] > 0
    assert len(arrivals) / times[-1] == pytest.approx(5.0, rel=0.05)
    gaps = np.diff(times)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.1)  # exponential gaps
    guided = sum(a.guidance_scale > 1 for a in arrivals) / len(arrivals)
    assert guided == pytest.approx(RequestMix().guided_fraction, abs=0.03)
    assert {a.num_steps for a in arrivals} == set(RequestMix().steps)


def test_bursty_arrivals_keep_the_mean_rate_with_silent_gaps() -> None:
    rate, burst, on_s = 5.0, 3.0, 1.0
    off_s = on_s * (burst - 1)  # silence long enough that the mean stays `rate`
    arrivals = bursty_arrivals(rate, 4000, seed=1, burst_factor=burst, on_s=on_s)
    times = np.array([a.time_s for a in arrivals])
    assert np.all(np.diff(times) >= 0)
    period_s = on_s + off_s
    cycles = np.floor(times / period_s)
    assert np.all(times - cycles * period_s <= on_s + 1e-9)  # all inside the on windows [k (on + off), + on]
    span_s = (cycles[-1] + 1) * period_s
    assert len(arrivals) / span_s == pytest.approx(rate, rel=0.05)
    gaps = np.diff(times)
    # one gap of at least off_s between consecutive bursts, none inside a burst
    assert int(np.sum(gaps >= off_s)) == len(np.unique(cycles)) - 1
    assert np.sum(gaps >= off_s) > 200  # about 4000 / (15 per burst) bursts
    on_rate = np.sum(gaps < off_s) / np.sum(gaps[gaps < off_s])
    assert on_rate == pytest.approx(burst * rate, rel=0.1)


# -- the iteration clock -------------------------------------------------------------------------------


def clock_seconds(report: StepReport, profile: LatencyProfile = PROFILE) -> float:
    return IterationClock(at_simulated_size(profile)).seconds(report)


def test_clock_of_unet_work_alone_is_the_profile_call_time() -> None:
    assert clock_seconds(StepReport((), unet_work=(UnetWork(2, LATENT),))) == pytest.approx(0.15)
    assert clock_seconds(StepReport((), unet_work=(UnetWork(3, LATENT),))) == \
        pytest.approx(PROFILE.unet_call_seconds(3)) == pytest.approx(0.2)  # halfway between 2 and 4 rows
    two_calls = StepReport((), unet_work=(UnetWork(1, LATENT), UnetWork(8, LATENT)))
    assert clock_seconds(two_calls) == pytest.approx(0.1 + 0.4)
    assert clock_seconds(StepReport((), unet_work=(UnetWork(1, (4, 8, 8)),))) == pytest.approx(4 * 0.1)  # 4x area
    assert clock_seconds(StepReport(())) == 0.0


def test_clock_with_chunks_follows_the_overlap_model() -> None:
    beside = StepReport((), unet_work=(UnetWork(2, LATENT),), chunks_beside=(ChunkWork("stage1", LATENT),))
    # UNet 0.15 s x 1.5 = 0.225 s shared; the chunk has done 0.225 / 2 = 0.1125 of its 0.12 s, then runs alone
    assert overlap(0.15, 0.12, Contention(1.5, 2.0)) == pytest.approx((0.225, 0.2325))
    assert clock_seconds(beside) == pytest.approx(0.2325)
    short = StepReport((), unet_work=(UnetWork(8, LATENT),), chunks_beside=(ChunkWork("stage0", LATENT),))
    # the UNet (0.4 s) outlasts the chunk (0.08 x 1.1 = 0.088 s), then finishes alone: 0.088 + 0.4 - 0.088 / 1.2
    assert clock_seconds(short) == pytest.approx(max(overlap(0.4, 0.08, Contention(1.2, 1.1))))
    assert clock_seconds(short) == pytest.approx(0.088 + 0.4 - 0.088 / 1.2)
    both = StepReport((), unet_work=(UnetWork(8, LATENT),),
                      chunks_beside=(ChunkWork("stage0", LATENT), ChunkWork("stage1", LATENT)))
    # two kinds beside: their VAE time adds up, under the larger slowdowns of the two
    assert clock_seconds(both) == pytest.approx(max(overlap(0.4, 0.2, Contention(1.5, 2.0))))
    after = StepReport((), unet_work=(UnetWork(2, LATENT),), chunks_beside=(ChunkWork("stage1", LATENT),),
                       chunks_after=(ChunkWork("whole", LATENT),))
    assert clock_seconds(after) == pytest.approx(0.2325 + 0.2)
    assert clock_seconds(StepReport((), chunks_after=(ChunkWork("whole", LATENT),))) == pytest.approx(0.2)
    assert clock_seconds(StepReport((), chunks_beside=(ChunkWork("whole", LATENT),))) == pytest.approx(0.2)


def test_clock_noise_is_seeded_jitter_around_the_profile() -> None:
    report = StepReport((), unet_work=(UnetWork(2, LATENT),))
    draws = [IterationClock(PROFILE, noise=0.2, seed=4) for _ in range(2)]
    first, second = ([clock.seconds(report) for _ in range(200)] for clock in draws)
    assert first == second and len(set(first)) == 200
    assert float(np.exp(np.mean(np.log(first)))) == pytest.approx(0.15, rel=0.05)  # log-normal around 0.15 s


# -- bounds and the table ----------------------------------------------------------------------------


def test_hardware_bounds_of_a_hand_profile() -> None:
    assert simulate_cli.hardware_bounds is hardware_bounds
    bounds = simulate_cli.hardware_bounds(PROFILE, MIX, slo_factor=5.0)
    # 6 steps x 1.5 rows / 20 rows/s = 0.45 s of UNet + 0.2 s decode per image
    assert PROFILE.peak_rows_per_second == pytest.approx(20.0)
    assert bounds.throughput_per_s == pytest.approx(1 / 0.65)
    assert bounds.single_latency_s == pytest.approx(8 * 0.15 + 0.2)  # the longest request, guided, alone
    assert bounds.slo_s == pytest.approx(7.0)
    unguided = hardware_bounds(PROFILE, RequestMix(steps=(10,), guided_fraction=0.0), slo_factor=2.0)
    assert unguided.throughput_per_s == pytest.approx(1 / (10 / 20 + 0.2))  # one row per step


def test_markdown_has_a_row_per_policy() -> None:
    bounds = hardware_bounds(PROFILE, MIX, slo_factor=5.0)
    loads = [0.5]
    latency, capacity = {}, {}
    for index, policy in enumerate(POLICIES):
        for kind in simulate_cli.ARRIVALS:
            arrivals = simulate_cli.ARRIVALS[kind](loads[0] * bounds.throughput_per_s, 10, 1, MIX)
            summary = simulate_cli.summarize([simulate(policy, arrivals, PROFILE, stages=STAGES)])
            latency[f"{policy}|{kind}|{loads[0]}"] = asdict(summary)
        capacity[policy] = 0.5 + 0.1 * index
    result = {"bounds": asdict(bounds), "loads": loads, "count": 10, "seeds": [1], "capacity": capacity,
              "latency": latency}
    text = simulate_cli.markdown(result, POLICIES)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| policy")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(POLICIES)
    header = next(line for line in text.splitlines() if line.startswith("| policy"))
    assert all(row.count("|") == header.count("|") for row in rows)
    assert "| synerdiff | 0.800 | 1.00x |" in text
    assert f"{bounds.throughput_per_s:.3f} img/s" in text


def test_stage_shapes_come_from_the_profile_metadata() -> None:
    assert simulate_cli.stage_shapes(PROFILE) is None
    described = LatencyProfile(**{**PROFILE.__dict__, "metadata": {"vae_stages": {"channels": [16, 3],
                                                                                  "scales": [2, 8]}}})
    assert simulate_cli.stage_shapes(described) == STAGES
