"""scheduler_backend.synerdiff_planner with hand-made views and hand-made latency profiles.

Two profiles: GPU-like (rows/s rises up to 16 rows, so the batch threshold B(θ) grows with θ) and CPU-like (flat
rows/s, so B(θ) = 1 row for every θ). Properties: every plan keeps planner.py's invariants, reaches the threshold
batch when enough work waits, keeps the UNet work within one threshold call of θ x peak (the credit rule), never
idles with work, decodes promptly under light load, steps more rows as the controller raises θ, and decides fast.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import replace
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.controller import ControllerSettings, ThresholdController
from scheduler_backend.planner import RequestView, SchedulerView, StepPlan, VaeJobView
from scheduler_backend.profile import Contention, LatencyProfile, overlap
from scheduler_backend.skip_cfg import skip_allowance
from scheduler_backend.synerdiff_planner import SynerDiffOptions, SynerDiffPlanner

SMALL, LARGE = (4, 8, 8), (4, 16, 16)
KINDS = ("whole", "stage0", "stage1", "stage2", "tile")

GPU_ROWS = tuple(range(1, 33))
GPU = LatencyProfile(
    latent_hw=(8, 8),
    unet_rows=GPU_ROWS,
    unet_seconds=tuple(0.02 + 0.005 * r if r <= 16 else 0.00625 * r for r in GPU_ROWS),  # peak 160 rows/s from 16
    vae_chunk_seconds={"whole": 0.04, "stage0": 0.01, "stage1": 0.02, "stage2": 0.015, "tile": 0.012},
    contention={"*": Contention(1.3, 1.5), "whole": Contention(1.8, 1.2)},
)
CPU = LatencyProfile(
    latent_hw=(8, 8),
    unet_rows=(1, 2, 4, 8),
    unet_seconds=(0.05, 0.1, 0.2, 0.4),  # 20 rows/s at every batch
    vae_chunk_seconds={"whole": 0.3, "stage0": 0.1, "stage1": 0.1, "stage2": 0.1, "tile": 0.09},
    contention={"*": Contention(1.9, 1.9)},
)
PROFILES = {"gpu": GPU, "cpu": CPU}
# Spelled out, so that tuning the defaults does not change what these tests pin.
CONTROL = ControllerSettings(minimum=0.70, maximum=0.95, initial=0.80, step=0.05, smoothing=0.3, raise_above=4.0,
                             lower_below=1.0, dwell=3)


def make_planner(profile: LatencyProfile = GPU, controller: ControllerSettings = CONTROL,
                 adaptive: bool = True, max_running: int = 16, **options: object) -> SynerDiffPlanner:
    return SynerDiffPlanner(profile, ThresholdController(controller, adaptive), max_running,
                            SynerDiffOptions(**options))  # type: ignore[arg-type]


def request(request_id: str, rows: int = 2, shape: tuple[int, ...] = SMALL, can_skip: bool = False,
            steps_done: int = 0) -> RequestView:
    return RequestView(request_id, shape, rows, steps_done, 20, can_skip_cfg=can_skip)


def job(request_id: str, pending: Sequence[str] = ("stage0", "stage1", "stage2"),
        shape: tuple[int, ...] = SMALL) -> VaeJobView:
    return VaeJobView(request_id, shape, tuple(pending), shape)


def requests(prefix: str, count: int, rows: int = 2) -> tuple[RequestView, ...]:
    return tuple(request(f"{prefix}{i}", rows) for i in range(count))


def stepped_ids(plan: StepPlan) -> tuple[str, ...]:
    return tuple(rid for call in plan.unet_calls for rid in call.request_ids)


def work_rows(view: SchedulerView, plan: StepPlan) -> int:
    rows = {r.request_id: r.unet_rows for r in (*view.waiting, *view.denoising)}
    return sum(rows[rid] for rid in stepped_ids(plan))


def stepped_rows(view: SchedulerView, plan: StepPlan) -> int:
    return work_rows(view, plan) - sum(len(call.skip_cfg) for call in plan.unet_calls)


def slack_s(profile: LatencyProfile, view: SchedulerView, plan: StepPlan) -> float:
    """The time the plan's UNet work deserves at its pace x peak (skipped rows count as work) minus its predicted
    time. The pace is θ, or less when the decodes of the requests in the system need more than (1 - θ)."""
    assert plan.threshold is not None and plan.unet_pace is not None and plan.predicted_s is not None
    assert plan.unet_pace <= plan.threshold
    return work_rows(view, plan) / (plan.unet_pace * profile.peak_rows_per_second) - plan.predicted_s


def apply_vae(view: SchedulerView, plan: StepPlan) -> tuple[VaeJobView, ...]:
    """The view's jobs after the plan's VAE calls ran (finished jobs removed)."""
    ran: dict[str, int] = {}
    for call in plan.vae_calls:
        for rid in call.request_ids:
            ran[rid] = ran.get(rid, 0) + 1
    left = (replace(j, pending=j.pending[ran.get(j.request_id, 0):]) for j in view.vae_jobs)
    return tuple(j for j in left if j.pending)


# -- the invariants of planner.py --------------------------------------------------------------------


def assert_keeps_invariants(view: SchedulerView, plan: StepPlan, planner: SynerDiffPlanner) -> None:
    profile, max_running = planner.profile, planner.max_running_requests
    assert plan.threshold is not None
    control = planner.controller.settings
    assert control.minimum - 1e-12 <= plan.threshold <= control.maximum + 1e-12
    waiting_ids = tuple(r.request_id for r in view.waiting)
    by_id = {r.request_id: r for r in (*view.waiting, *view.denoising)}
    # admission: a FIFO prefix, within the running bound
    assert plan.admit == waiting_ids[:len(plan.admit)]
    assert len(plan.admit) <= max(0, max_running - view.running)
    # UNet: one call of one shape, a prefix of the candidates (oldest first), skips only where allowed
    pool = [*view.denoising, *view.waiting[:max(0, max_running - view.running)]]
    if not pool:
        assert plan.unet_calls == ()
    else:
        candidates = [r for r in pool if r.latent_shape == pool[0].latent_shape]
        (call,) = plan.unet_calls  # candidates exist: the UNet never idles
        count = len(call.request_ids)
        assert call.request_ids == tuple(r.request_id for r in candidates[:count])
        assert set(call.request_ids) <= {r.request_id for r in view.denoising} | set(plan.admit)
        eligible = [rid for rid in call.request_ids if by_id[rid].can_skip_cfg]
        allowed = skip_allowance(len(eligible), planner.controller.load_pressure) if planner.options.skip_cfg else 0
        assert call.skip_cfg == tuple(eligible[:allowed])  # the oldest eligible, as many as the load allows
        rows = stepped_rows(view, plan)
        assert rows <= profile.max_rows or count == 1
        if rows < profile.threshold_rows(plan.threshold):  # short of B(θ) only when nothing more fits
            assert count == len(candidates) or rows + candidates[count].unet_rows > profile.max_rows
    # VAE: the first chunks of the FIFO chunk queue, one job's chunks in order, never more than pending
    queue = [j.request_id for j in view.vae_jobs for _ in j.pending][:planner.options.max_chunks_per_iteration]
    ran = [rid for call in plan.vae_calls for rid in call.request_ids]
    assert all(len(call.request_ids) == 1 for call in plan.vae_calls)
    assert ran == queue[:len(ran)]
    if planner.options.search == "greedy" and plan.unet_calls:
        assert plan.vae_after == ()
    if not pool and view.vae_jobs:
        assert plan.vae_calls  # VAE work and nothing to denoise: it decodes
    if not plan.is_idle:
        assert plan.predicted_s is not None and plan.predicted_s > 0


@st.composite
def views(draw: st.DrawFn, max_denoising: int = 24) -> SchedulerView:
    shapes = st.sampled_from([SMALL, SMALL, LARGE])
    waiting = tuple(request(f"w{i}", draw(st.sampled_from([1, 2])), draw(shapes))
                    for i in range(draw(st.integers(0, 8))))
    denoising = []
    for i in range(draw(st.integers(0, max_denoising))):
        rows = draw(st.sampled_from([1, 2]))
        denoising.append(request(f"d{i}", rows, draw(shapes), rows == 2 and draw(st.booleans()),
                                 draw(st.integers(0, 19))))
    jobs = tuple(job(f"j{i}", draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=5)), draw(shapes))
                 for i in range(draw(st.integers(0, 6))))
    return SchedulerView(waiting, tuple(denoising), jobs)


@settings(max_examples=60, deadline=None)
@given(scheduler_views=st.lists(views(), min_size=1, max_size=4), profile=st.sampled_from(["gpu", "cpu"]),
       search=st.sampled_from(["dp", "greedy"]), skip_cfg=st.booleans(), max_running=st.integers(1, 20))
def test_every_plan_keeps_the_planner_invariants(scheduler_views: list[SchedulerView], profile: str, search: str,
                                                 skip_cfg: bool, max_running: int) -> None:
    planner = make_planner(PROFILES[profile], max_running=max_running, search=search, skip_cfg=skip_cfg)
    for scheduler_view in scheduler_views:  # one planner across views: its controller and credit carry over
        assert_keeps_invariants(scheduler_view, planner.plan(scheduler_view), planner)


def test_an_empty_view_gives_an_idle_plan() -> None:
    plan = make_planner().plan(SchedulerView())
    assert plan.is_idle and plan.unet_calls == () and plan.vae_calls == ()


# -- the throughput threshold ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
@pytest.mark.parametrize("theta", [0.7, 0.8, 0.9, 0.95])
def test_with_enough_work_waiting_the_stepped_rows_reach_the_threshold_batch(profile: str, theta: float) -> None:
    """A long queue makes every waiting request weigh on the cost of a long iteration, so left alone the search
    would step few rows; the constraint makes it step B(θ)."""
    chosen = PROFILES[profile]
    planner = make_planner(chosen, replace(CONTROL, minimum=theta, initial=theta, maximum=theta), adaptive=False)
    scheduler_view = SchedulerView(requests("w", 12), requests("d", 16, rows=1), (job("j0"), job("j1")))
    target = chosen.threshold_rows(theta)
    assert 16 >= target
    for _ in range(3):
        plan = planner.plan(scheduler_view)
        assert plan.threshold == theta and stepped_rows(scheduler_view, plan) >= target


def constrained_views(rng: random.Random, count: int) -> list[SchedulerView]:
    """Views with more than 32 candidate rows (every profile's largest batch): each plan is constrained."""
    result = []
    for _ in range(count):
        denoising = []
        for i in range(rng.randint(34, 40)):
            rows = rng.choice([1, 2])
            denoising.append(request(f"d{i}", rows, can_skip=rows == 2 and rng.random() < 0.5))
        jobs = tuple(job(f"j{i}", [rng.choice(KINDS) for _ in range(rng.randint(1, 5))])
                     for i in range(rng.randint(0, 6)))
        result.append(SchedulerView(requests("w", rng.randint(0, 12)), tuple(denoising), jobs))
    return result


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), profile=st.sampled_from(["gpu", "cpu"]), adaptive=st.booleans())
def test_unet_work_keeps_pace_with_theta_times_peak_within_one_banked_step(seed: int, profile: str,
                                                                              adaptive: bool) -> None:
    """The credit rule: in every run of constrained iterations, the time the UNet work deserves at θ x peak
    (work rows / (θ peak), skipped rows counted as work) minus the predicted iteration time never falls below
    minus the most credit the planner may bank: one UNet call at the threshold batch, or the head chunk when
    that is longer (so a chunk longer than a step still runs eventually). Unbounded VAE packing
    (or any deficit the planner does not pay back) breaks it within a few iterations."""
    chosen = PROFILES[profile]
    planner = make_planner(chosen, adaptive=adaptive)
    balance, best_balance, worst_window, largest_cap = 0.0, 0.0, 0.0, 0.0
    for scheduler_view in constrained_views(random.Random(seed), 120):
        plan = planner.plan(scheduler_view)
        assert plan.threshold is not None
        target = chosen.threshold_rows(plan.threshold)
        assert stepped_rows(scheduler_view, plan) >= target
        balance += slack_s(chosen, scheduler_view, plan)
        worst_window = min(worst_window, balance - best_balance)
        best_balance = max(best_balance, balance)
        head_chunk_s = (chosen.chunk_seconds(scheduler_view.vae_jobs[0].pending[0],
                                             chosen.area_ratio(scheduler_view.vae_jobs[0].latent_shape[1:]))
                        if scheduler_view.vae_jobs else 0.0)
        largest_cap = max(largest_cap, chosen.unet_call_seconds(target), head_chunk_s)
    assert worst_window >= -largest_cap - 1e-9
    assert balance >= -1e-9  # from the start: never behind at all


def test_a_chunk_that_would_slow_the_threshold_batch_waits_until_enough_slack_is_banked() -> None:
    """θ = 0.9: the whole decode beside any batch costs more than the batch's slack, so the first plans step the
    UNet alone, each banking the slack of its batch; once the credit covers it, the decode runs."""
    planner = make_planner(GPU, replace(CONTROL, initial=0.9, minimum=0.9), adaptive=False)
    long_requests = tuple(RequestView(f"d{i}", SMALL, 1, 0, 150) for i in range(20))  # decodes: ~1 % of the work
    scheduler_view = SchedulerView((), long_requests, (job("j0", ("whole",)),))
    plans = [planner.plan(scheduler_view) for _ in range(12)]
    ran = [bool(plan.vae_calls) for plan in plans]
    assert not ran[0] and any(ran)
    first = ran.index(True)
    assert first >= 3  # several iterations of slack, not one
    banked = sum(slack_s(GPU, scheduler_view, plan) for plan in plans[:first])
    spent = -slack_s(GPU, scheduler_view, plans[first])
    assert 0 < spent <= banked + 1e-12


# -- never idle, prompt under light load -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(pending=st.lists(st.lists(st.sampled_from(KINDS), min_size=1, max_size=5), min_size=1, max_size=6),
       profile=st.sampled_from(["gpu", "cpu"]), search=st.sampled_from(["dp", "greedy"]),
       queue=st.integers(0, 20))
def test_with_only_vae_work_it_runs_at_least_one_chunk(pending: list[list[str]], profile: str, search: str,
                                                       queue: int) -> None:
    planner = make_planner(PROFILES[profile], max_running=4, search=search)
    full = requests("x", 4)  # the running bound is reached: nothing waiting can be admitted
    jobs = tuple(job(f"j{i}", kinds) for i, kinds in enumerate(pending))
    for _ in range(3):
        scheduler_view = SchedulerView(requests("w", queue), (), jobs + tuple(job(r.request_id) for r in full))
        plan = planner.plan(scheduler_view)
        assert plan.unet_calls == () and len(plan.vae_calls) >= 1
        assert plan.vae_calls[0].request_ids == ("j0",)


def test_a_lone_decode_runs_all_its_chunks_at_once_when_they_fit_one_threshold_call() -> None:
    planner = make_planner(GPU)
    plan = planner.plan(SchedulerView((), (), (job("j0", ("stage0", "stage1", "stage2")),)))
    assert plan.threshold is not None
    assert sum(GPU.chunk_seconds(k) for k in ("stage0", "stage1", "stage2")) <= GPU.unet_call_seconds(
        GPU.threshold_rows(plan.threshold))
    assert [call.request_ids for call in plan.vae_calls] == [("j0",)] * 3


def run_until_decoded(planner: SynerDiffPlanner, denoising: tuple[RequestView, ...], decode: VaeJobView,
                      limit: int) -> list[int]:
    """Plans with `denoising` stepping on and one decode; returns the chunks run per iteration until it is done."""
    jobs: tuple[VaeJobView, ...] = (decode,)
    per_iteration: list[int] = []
    while jobs and len(per_iteration) < limit:
        scheduler_view = SchedulerView((), denoising, jobs)
        plan = planner.plan(scheduler_view)
        per_iteration.append(len(plan.vae_calls))
        jobs = apply_vae(scheduler_view, plan)
    return per_iteration


@pytest.mark.parametrize("rows", [1, 2])
def test_under_light_load_a_decode_starts_at_once_and_progresses_every_iteration(rows: int) -> None:
    per_iteration = run_until_decoded(make_planner(GPU), requests("d", 2, rows), job("j0"), limit=10)
    assert per_iteration[0] >= 1 and all(count >= 1 for count in per_iteration)
    assert sum(per_iteration) == 3 and len(per_iteration) <= 3


# Rounded from a profile measured for the `bench` preset on a 2-core CPU host: the peak is one row, so every
# iteration with UNet work is constrained, and stage3 / stage4 take more than twice a one-row UNet call.
BENCH_CPU = LatencyProfile(
    latent_hw=(32, 32),
    unet_rows=(1, 2, 3, 4, 6, 8, 12, 16),
    unet_seconds=(0.127, 0.316, 0.443, 0.885, 1.198, 1.604, 2.535, 3.130),
    vae_chunk_seconds={"whole": 0.863, "stage0": 0.027, "stage1": 0.046, "stage2": 0.223, "stage3": 0.289,
                       "stage4": 0.281, "tile": 0.296},
    contention={"whole": Contention(1.87, 1.0), "stage0": Contention(1.05, 1.10), "stage1": Contention(1.70, 1.0),
                "stage2": Contention(3.04, 1.0), "stage3": Contention(1.11, 1.25), "stage4": Contention(1.0, 1.61),
                "tile": Contention(1.36, 1.0)},
)


def test_a_decode_progresses_while_one_request_denoises_on_a_cpu_like_profile() -> None:
    decode = job("j0", tuple(f"stage{k}" for k in range(5)), shape=(4, 32, 32))
    denoising = (request("d0", rows=1, shape=(4, 32, 32)),)
    per_iteration = run_until_decoded(make_planner(BENCH_CPU), denoising, decode, limit=40)
    assert sum(per_iteration) == 5, f"chunks run per iteration: {per_iteration}"


# -- θ and the batch ---------------------------------------------------------------------------------


def test_on_a_gpu_like_profile_it_steps_more_rows_as_a_long_queue_raises_theta() -> None:
    planner = make_planner(GPU, replace(CONTROL, initial=0.7))
    scheduler_view = SchedulerView(requests("w", 12), requests("d", 16, rows=1), ())  # 16 running: none admitted
    seen: dict[float, int] = {}
    for _ in range(30):
        plan = planner.plan(scheduler_view)
        assert plan.threshold is not None
        seen[round(plan.threshold, 6)] = len(stepped_ids(plan))
    thetas = sorted(seen)
    assert thetas[0] == pytest.approx(0.7) and thetas[-1] == pytest.approx(0.95)
    rows = [seen[theta] for theta in thetas]
    assert rows[-1] > rows[0]  # (between, the latency objective may step more than the threshold batch)
    assert all(seen[theta] >= GPU.threshold_rows(theta) for theta in thetas)


def test_on_a_cpu_like_profile_the_threshold_batch_is_one_row_for_every_theta() -> None:
    assert {CPU.threshold_rows(theta) for theta in (0.5, 0.7, 0.95, 1.0)} == {1}


def test_skip_cfg_is_used_only_under_pressure_and_never_when_disabled() -> None:
    eligible = tuple(request(f"d{i}", can_skip=True) for i in range(6))
    idle, busy = SchedulerView((), eligible, ()), SchedulerView(requests("w", 20), eligible, ())
    assert make_planner().plan(idle).unet_calls[0].skip_cfg == ()
    planner = make_planner(max_running=6)
    for _ in range(10):
        plan = planner.plan(busy)
    assert planner.controller.load_pressure == 1.0
    assert plan.unet_calls[0].skip_cfg == stepped_ids(plan)
    disabled = make_planner(max_running=6, skip_cfg=False)
    assert all(disabled.plan(busy).unet_calls[0].skip_cfg == () for _ in range(10))


# -- the greedy ablation -----------------------------------------------------------------------------


def test_greedy_packs_chunks_beside_only_while_the_unet_slowdown_stays_within_one_over_theta() -> None:
    heavy = replace(GPU, contention={"*": Contention(2.0, 2.0)})
    planner = make_planner(heavy, CONTROL, adaptive=False, search="greedy")
    scheduler_view = SchedulerView((), requests("d", 8), tuple(job(f"j{i}", ("tile",) * 4) for i in range(4)))
    plan = planner.plan(scheduler_view)
    unet_s = heavy.unet_call_seconds(stepped_rows(scheduler_view, plan))
    lane_s = heavy.chunk_seconds("tile") * len(plan.vae_beside)
    unet_end, _ = overlap(unet_s, lane_s, Contention(2.0, 2.0))
    assert unet_end <= unet_s / 0.8 + 1e-12


# -- the predicted duration --------------------------------------------------------------------------


def fluid_iteration_seconds(profile: LatencyProfile, unet_s: float, beside: Sequence[str],
                            after: Sequence[str]) -> float:
    """An independent event simulation: the UNet call and the beside lane start together; while a chunk of kind k
    runs beside it, each progresses at 1/slowdown of its solo rate (contention_for(k)); then the after lane."""
    now, unet_left = 0.0, unet_s
    for kind in beside:
        chunk_left, contention = profile.chunk_seconds(kind), profile.contention_for(kind)
        if unet_left > 0:
            shared = min(unet_left * contention.unet_slowdown, chunk_left * contention.vae_slowdown)
            now += shared
            unet_left -= shared / contention.unet_slowdown
            chunk_left -= shared / contention.vae_slowdown
            unet_left = 0.0 if unet_left < 1e-15 else unet_left
        now += max(chunk_left, 0.0)
    return now + unet_left + sum(profile.chunk_seconds(kind) for kind in after)


def chunk_kinds(view: SchedulerView, plan: StepPlan) -> tuple[list[str], list[str]]:
    queue = [kind for j in view.vae_jobs for kind in j.pending]
    return queue[:len(plan.vae_beside)], queue[len(plan.vae_beside):len(plan.vae_calls)]


@settings(max_examples=80, deadline=None)
@given(scheduler_view=views(), kind=st.sampled_from(KINDS), profile=st.sampled_from(["gpu", "cpu"]))
def test_predicted_seconds_match_the_fluid_model_when_chunks_are_of_one_kind(scheduler_view: SchedulerView,
                                                                            kind: str, profile: str) -> None:
    chosen = PROFILES[profile]
    scheduler_view = replace(scheduler_view, waiting=(), vae_jobs=tuple(  # one latent size, as the profile's
        replace(j, latent_shape=SMALL, pending=(kind,) * len(j.pending)) for j in scheduler_view.vae_jobs))
    plan = make_planner(chosen).plan(scheduler_view)
    if plan.is_idle:
        return
    area = chosen.area_ratio(scheduler_view.denoising[0].latent_shape[1:]) if plan.unet_calls else 1.0
    unet_s = chosen.unet_call_seconds(stepped_rows(scheduler_view, plan), area) if plan.unet_calls else 0.0
    beside, after = chunk_kinds(scheduler_view, plan)
    assert plan.predicted_s == pytest.approx(fluid_iteration_seconds(chosen, unet_s, beside, after), rel=1e-9)


def test_predicted_seconds_never_underestimate_chunks_of_mixed_kinds() -> None:
    mixed = LatencyProfile(
        (8, 8), tuple(range(1, 17)), tuple(0.02 + 0.005 * r for r in range(1, 17)),
        {"stage0": 0.01, "stage1": 0.01, "stage2": 0.01},
        {"stage0": Contention(1.0, 1.0), "stage1": Contention(1.0, 1.0), "stage2": Contention(3.0, 1.0)})
    scheduler_view = SchedulerView((), requests("d", 3), (job("j0", ("stage0", "stage2", "stage2")),))
    plan = make_planner(mixed).plan(scheduler_view)
    beside, after = chunk_kinds(scheduler_view, plan)
    truth = fluid_iteration_seconds(mixed, mixed.unet_call_seconds(stepped_rows(scheduler_view, plan)), beside, after)
    assert plan.predicted_s is not None and plan.predicted_s >= truth - 1e-9


# -- decision time -----------------------------------------------------------------------------------


def test_decision_time_is_a_few_milliseconds_for_a_full_iteration() -> None:
    """BEHAVIOUR BOUND ON THE ALGORITHM'S SIZE, not a benchmark: 16 denoising requests and 8 decodes of 5 chunks
    take about 1.5 ms per plan on a 2-core CPU; the bound is generous for a loaded machine but fails for a search
    that grows with the product of the options (e.g. over every subset of chunks)."""
    planner = make_planner(GPU)
    scheduler_view = SchedulerView(requests("w", 4), tuple(request(f"d{i}", can_skip=i % 3 == 0) for i in range(16)),
                                   tuple(job(f"j{i}", ("stage0", "stage1", "stage2", "stage1", "stage2"))
                                         for i in range(8)))
    durations = []
    for _ in range(25):
        started = time.perf_counter()
        planner.plan(scheduler_view)
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 5e-3
