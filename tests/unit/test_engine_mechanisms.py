"""The engine's SynerDiff mechanisms around the fake executor of test_engine.py: Skip-CFG (window, budget, the
conditional row as the noise), VAE chunking (tiles blended, stages chained), the beside and after lanes, failures
and aborts between chunks, and every serving policy draining a mixed workload.

The fake UNet tags its rows (embeddings(tag): row 2*tag unconditional, 2*tag + 1 prompt), so the recorded calls say
which rows of which request each step ran."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pytest

from scheduler_backend.controller import ThresholdController
from scheduler_backend.engine import Engine, Event, RequestFinished, to_uint8_images
from scheduler_backend.errors import Cancelled, ExecutionFailed
from scheduler_backend.limits import Limits, ModelSpec
from scheduler_backend.planner import (ContinuousPlanner, Planner, SchedulerView, StepPlan, UnetCall, VaeCall,
                                       group_by_shape)
from scheduler_backend.policies import POLICIES, PolicySettings, make_policy
from scheduler_backend.profile import Contention, LatencyProfile
from scheduler_backend.request import GenerationParams
from scheduler_backend.sampler import SamplerKind, batched_step, guided_noise, initial_latent, make_sampler_plan
from scheduler_backend.skip_cfg import SkipCfgPolicy
from scheduler_backend.synerdiff_planner import SynerDiffPlanner
from scheduler_backend.vae_chunks import ChunkingSpec
from test_engine import (SCHEDULE, SPEC, VAE_STAGES, FakeExecutor, UnetRecord, add, assert_empty, drain, embeddings,
                         finished, image_of, params, unet_row, vae_row)

STAGED = replace(SPEC, vae_stages=VAE_STAGES)
PROFILE = LatencyProfile(
    latent_hw=(8, 8),
    unet_rows=(1, 2, 4, 8, 16),
    unet_seconds=(0.025, 0.03, 0.04, 0.06, 0.10),
    vae_chunk_seconds={"whole": 0.02, "stage0": 0.005, "stage1": 0.005, "stage2": 0.008, "tile": 0.006},
    contention={"*": Contention(1.2, 1.2)},
)
WHOLE, STAGES, TILES = ChunkingSpec("whole"), ChunkingSpec("stages"), ChunkingSpec("tiles", (1, 2), 2)


def make(planner: Planner, executor: FakeExecutor | None = None, chunking: ChunkingSpec = WHOLE,
         skip_cfg: SkipCfgPolicy | None = None, spec: ModelSpec = STAGED,
         max_running: int = 16) -> tuple[Engine, FakeExecutor]:
    executor = FakeExecutor() if executor is None else executor
    limits = Limits(spec, max_waiting_requests=64, max_running_requests=max_running)
    return Engine(executor, planner, limits, SCHEDULE, chunking=chunking, skip_cfg=skip_cfg), executor


def steps_of(calls: Sequence[UnetRecord], tag: int) -> list[tuple[int, ...]]:
    """The rows request r{tag} ran in each UNet call it joined, in order: one entry per step."""
    return [rows for call in calls if (rows := tuple(row for row in call.rows if row // 2 == tag))]


def skipped_steps(calls: Sequence[UnetRecord], tag: int) -> list[int]:
    """Step indices at which the guided request r{tag} ran its prompt row only."""
    return [k for k, rows in enumerate(steps_of(calls, tag)) if rows == (2 * tag + 1,)]


# -- scripted planners -------------------------------------------------------------------------------


@dataclass
class SkipEverything:
    """Continuous batching that asks Skip-CFG for every request at every step: the engine must keep only what its
    SkipCfgPolicy allows."""

    inner: ContinuousPlanner = field(default_factory=lambda: ContinuousPlanner(16))

    def plan(self, view: SchedulerView) -> StepPlan:
        plan = self.inner.plan(view)
        return replace(plan, unet_calls=tuple(UnetCall(c.request_ids, c.request_ids) for c in plan.unet_calls))


@dataclass
class LanePlanner:
    """Continuous batching; of each decode's next `per_step` chunks (one call per request and chunk), the first
    `beside` run beside the UNet and the rest after it."""

    beside: int = 1
    per_step: int = 8

    def plan(self, view: SchedulerView) -> StepPlan:
        beside: list[VaeCall] = []
        after: list[VaeCall] = []
        for job in view.vae_jobs:
            for position in range(min(self.per_step, len(job.pending))):
                (beside if position < self.beside else after).append(VaeCall((job.request_id,)))
        stepping = [*view.denoising, *view.waiting]
        return StepPlan(admit=tuple(r.request_id for r in view.waiting),
                        unet_calls=tuple(UnetCall(ids) for ids in group_by_shape(stepping)),
                        vae_beside=tuple(beside), vae_after=tuple(after))


def synerdiff(max_running: int = 16) -> SynerDiffPlanner:
    return SynerDiffPlanner(PROFILE, ThresholdController(), max_running)


# -- Skip-CFG ----------------------------------------------------------------------------------------

# (steps, guidance): window start ceil(0.6 n), budget floor(0.3 n) with the default policy
SKIP_WORKLOAD = [(10, 7.5), (7, 7.5), (5, 3.0), (10, 1.0), (12, 7.5), (4, 7.5), (10, 7.5), (6, 1.0)] * 2


async def run_workload(engine: Engine, workload: Sequence[tuple[int, float]]) -> tuple[list[Event], int]:
    for tag, (steps, guidance) in enumerate(workload):
        add(engine, tag, params(seed=tag, steps=steps, guidance=guidance, height=16 if tag % 3 else 32))
    events: list[Event] = []
    skipped_rows = 0
    for _ in range(500):
        if not engine.has_work:
            return events, skipped_rows
        report = await engine.step()
        events += report.events
        skipped_rows += report.skipped_cfg_rows
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("planner", ["synerdiff", "skip-everything"])
def test_skipped_steps_lie_in_the_window_within_the_budget_and_only_for_guided_requests(planner: str) -> None:
    policy = SkipCfgPolicy()  # window from 60 % of the steps, at most 30 % of them
    chosen: Planner = synerdiff(max_running=4) if planner == "synerdiff" else SkipEverything()
    engine, executor = make(chosen, skip_cfg=policy)
    events, reported = asyncio.run(run_workload(engine, SKIP_WORKLOAD))
    ends = finished(events)
    assert len(ends) == len(SKIP_WORKLOAD) and all(e.image is not None for e in ends.values())
    total = 0
    for tag, (steps, guidance) in enumerate(SKIP_WORKLOAD):
        per_step = steps_of(executor.unet_calls, tag)
        assert len(per_step) == steps
        skipped = skipped_steps(executor.unet_calls, tag)
        if guidance == 1.0:
            assert per_step == [(2 * tag + 1,)] * steps  # no CFG: one row, never "skipped"
            continue
        assert all(rows in ((2 * tag, 2 * tag + 1), (2 * tag + 1,)) for rows in per_step)
        assert all(k >= math.ceil(0.6 * steps) for k in skipped), (tag, skipped)
        assert len(skipped) <= math.floor(0.3 * steps)
        if planner == "skip-everything":  # every allowed step skips: the first `budget` steps of the window
            first = math.ceil(0.6 * steps)
            assert skipped == list(range(first, first + min(math.floor(0.3 * steps), steps - first)))
        total += len(skipped)
    assert total == reported > 0  # it did skip (under load), and the reports count exactly those rows


@pytest.mark.parametrize("planner", ["synerdiff", "skip-everything"])
def test_without_a_skip_cfg_policy_no_step_skips(planner: str) -> None:
    chosen: Planner = synerdiff(max_running=4) if planner == "synerdiff" else SkipEverything()
    engine, executor = make(chosen, skip_cfg=None)
    events, reported = asyncio.run(run_workload(engine, SKIP_WORKLOAD))
    assert len(finished(events)) == len(SKIP_WORKLOAD) and reported == 0
    for tag, (steps, guidance) in enumerate(SKIP_WORKLOAD):
        full = (2 * tag, 2 * tag + 1) if guidance != 1.0 else (2 * tag + 1,)
        assert steps_of(executor.unet_calls, tag) == [full] * steps


def manual_image(tag: int, request: GenerationParams, skipped: set[int]) -> np.ndarray:
    """One request the plain way with the engine's own arithmetic; at the steps in `skipped` the noise estimate
    is the prompt row's prediction alone."""
    plan = make_sampler_plan(request.sampler, SCHEDULE, request.num_steps)
    text = embeddings(tag)
    latent = initial_latent(request.seed, SPEC.latent_shape(request.height, request.width), plan.init_noise_sigma)
    for k in range(request.num_steps):
        model_input = latent * plan.input_scales[k]
        t = plan.model_timesteps[k]
        cond = unet_row(model_input, t, text[1])
        if k in skipped:
            noise = cond
        else:
            uncond = unet_row(model_input, t, text[0])
            noise = guided_noise(uncond[None], cond[None], np.array([request.guidance_scale], np.float32))[0]
        latent = batched_step(latent[None], noise[None], np.array([plan.sample_coefs[k]], np.float32),
                              np.array([plan.noise_coefs[k]], np.float32))[0]
    return to_uint8_images(vae_row(latent)[None])[0]


@pytest.mark.parametrize("sampler", list(SamplerKind))
def test_a_skipped_step_uses_the_conditional_prediction_as_the_noise(sampler: SamplerKind) -> None:
    request = params(seed=3, steps=10, guidance=7.5, height=16, sampler=sampler)

    async def run() -> tuple[np.ndarray, list[int]]:
        engine, executor = make(SkipEverything(), skip_cfg=SkipCfgPolicy())
        add(engine, 0, request)
        return image_of(await drain(engine), "r0"), skipped_steps(executor.unet_calls, 0)

    image, skipped = asyncio.run(run())
    assert skipped == [6, 7, 8]
    assert np.array_equal(image, manual_image(0, request, {6, 7, 8}))  # bit for bit (vae_row is that sensitive)
    assert not np.array_equal(image, manual_image(0, request, set()))
    assert not np.array_equal(image, manual_image(0, request, {7, 8, 9}))


# -- VAE chunking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("planner", ["continuous", "synerdiff"])
def test_stages_chunking_gives_the_same_image_as_whole_decoding(planner: str) -> None:
    workload = [params(seed=s, steps=2 + s % 3, guidance=(7.5, 1.0)[s % 2], height=(16, 32)[s % 3 == 0],
                       width=(16, 32)[s % 4 == 1]) for s in range(7)]

    async def run(chunking: ChunkingSpec) -> tuple[dict[str, np.ndarray], FakeExecutor]:
        engine, executor = make(ContinuousPlanner(16) if planner == "continuous" else synerdiff(), chunking=chunking)
        for tag, request in enumerate(workload):
            add(engine, tag, request)
        events = await drain(engine)
        assert_empty(engine)
        return {rid: image_of(events, rid) for rid in finished(events)}, executor

    whole, whole_executor = asyncio.run(run(WHOLE))
    staged, staged_executor = asyncio.run(run(STAGES))
    assert whole.keys() == staged.keys() and len(whole) == len(workload)
    assert all(np.array_equal(whole[rid], staged[rid]) for rid in whole)
    assert all(call.stage is None for call in whole_executor.vae_calls)
    stage_runs = [call.stage for call in staged_executor.vae_calls for _ in range(call.size) if call.stage is not None]
    assert sorted(stage_runs) == sorted([0, 1, 2] * len(workload))  # every decode ran each stage exactly once


class RecordingVae(FakeExecutor):
    """A smooth decoder that is not per-pixel (each output carries its input's mean), recording its inputs."""

    inputs: list[np.ndarray]

    def __init__(self) -> None:
        super().__init__()
        self.inputs = []

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        self.inputs += list(latents)
        return np.stack([offset_vae(latent) for latent in latents])


def offset_vae(latent: np.ndarray) -> np.ndarray:
    upsampled = latent[:3].repeat(2, axis=1).repeat(2, axis=2)
    return (np.tanh(upsampled) * np.float32(0.5) + np.float32(latent.mean()) * np.float32(0.4)).astype(np.float32)


def test_tiles_are_latent_windows_blended_with_linear_ramps() -> None:
    request = params(seed=9, steps=3, guidance=7.5, height=16)  # latent 8 x 8: tiles [0, 5) and [3, 8) across

    async def run(chunking: ChunkingSpec) -> tuple[np.ndarray, RecordingVae]:
        executor = RecordingVae()
        engine, _ = make(ContinuousPlanner(4), executor, chunking=chunking)
        add(engine, 0, request)
        return image_of(await drain(engine), "r0"), executor

    _, whole = asyncio.run(run(WHOLE))
    image, tiled = asyncio.run(run(TILES))
    (latent,) = whole.inputs
    left, right = tiled.inputs
    assert np.array_equal(left, latent[:, :, 0:5]) and np.array_equal(right, latent[:, :, 3:8])
    out_left, out_right = offset_vae(left), offset_vae(right)  # image columns [0, 10) and [6, 16)
    ramp = (np.arange(4, dtype=np.float32) + 0.5) / 4
    by_hand = np.concatenate([out_left[:, :, :6],
                              out_left[:, :, 6:] * (1 - ramp) + out_right[:, :, :4] * ramp,
                              out_right[:, :, 4:]], axis=2)
    assert not np.allclose(out_left[:, :, 6:], out_right[:, :, :4], atol=1e-3)  # the tiles really disagree there
    difference = np.abs(image.astype(np.int16) - to_uint8_images(by_hand[None])[0].astype(np.int16))
    assert difference.max() <= 1


def test_tiles_of_a_per_pixel_decoder_give_the_whole_decode() -> None:
    workload = [params(seed=s, steps=2, guidance=7.5, height=(16, 32)[s % 2], width=32) for s in range(4)]

    async def run(chunking: ChunkingSpec) -> dict[str, np.ndarray]:
        engine, _ = make(ContinuousPlanner(8), chunking=chunking)
        for tag, request in enumerate(workload):
            add(engine, tag, request)
        events = await drain(engine)
        return {rid: image_of(events, rid) for rid in finished(events)}

    whole, tiled = asyncio.run(run(WHOLE)), asyncio.run(run(ChunkingSpec("tiles", (2, 3), 2)))
    for rid in whole:  # vae_row is per pixel, so each tile is a crop of the whole image; blending is exact up
        difference = np.abs(whole[rid].astype(np.int16) - tiled[rid].astype(np.int16))  # to float rounding
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99


def test_stages_chunking_needs_a_model_exported_with_stage_graphs() -> None:
    with pytest.raises(ValueError, match="stage graphs"):
        make(ContinuousPlanner(4), chunking=STAGES, spec=SPEC)
    make(ContinuousPlanner(4), chunking=STAGES, spec=STAGED)  # with them it is fine


# -- the lanes ---------------------------------------------------------------------------------------


class TracingExecutor(FakeExecutor):
    """Logs when each call starts and ends; every call yields to the event loop a few times."""

    trace: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.trace = []

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        self.trace.append("start unet")
        for _ in range(3):
            await asyncio.sleep(0)
        result = await super().run_unet(samples, timesteps, text_embeddings)
        self.trace.append("end unet")
        return result

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        self.trace.append(f"start stage{stage}")
        result = await super().run_vae_stage(stage, hidden)
        self.trace.append(f"end stage{stage}")
        return result


def test_the_beside_lane_runs_during_the_unet_call_and_the_after_lane_once_it_ended() -> None:
    async def scenario() -> None:
        executor = TracingExecutor()
        engine, _ = make(LanePlanner(beside=1), executor, chunking=STAGES)
        add(engine, 0, params(steps=1))
        add(engine, 1, params(steps=3, seed=1))
        await engine.step()  # both step; r0 is denoised
        executor.trace.clear()
        report = await engine.step()  # r1's UNet call, r0's stage0 beside it, stage1 and stage2 after
        trace = executor.trace
        assert [w.kind for w in report.chunks_beside] == ["stage0"]
        assert [w.kind for w in report.chunks_after] == ["stage1", "stage2"]
        assert trace.index("start stage0") < trace.index("end unet")  # concurrent
        assert trace.index("end unet") < trace.index("start stage1")  # after
        assert trace.index("end stage0") < trace.index("start stage1") < trace.index("end stage1") < trace.index(
            "start stage2")  # one lane: one call after another
        assert image_of(report.events, "r0").shape == (16, 16, 3)

    asyncio.run(scenario())


# -- failures and aborts between chunks --------------------------------------------------------------


def test_a_failing_vae_chunk_fails_only_its_request() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(fail_vae=lambda record: record.stage == 1 and record.latent_hw == (16, 16))
        engine, _ = make(LanePlanner(beside=1), executor, chunking=STAGES)
        add(engine, 0, params(steps=1, height=16))
        add(engine, 1, params(steps=1, height=32, seed=1))
        add(engine, 2, params(steps=3, height=16, seed=2))
        events = await drain(engine)
        ends = finished(events)
        assert ends["r0"].image is not None and ends["r2"].image is not None
        error = ends["r1"].error
        assert ends["r1"].image is None and isinstance(error, ExecutionFailed)
        assert "boom" not in error.message and "/secret" not in error.message
        assert [c.stage for c in executor.vae_calls if c.latent_hw == (16, 16)] == [0, 1]  # stage2 never ran
        assert_empty(engine)

    asyncio.run(scenario())


def test_a_chunk_of_the_wrong_shape_fails_only_its_request_naming_the_chunk() -> None:
    class Truncating(FakeExecutor):
        async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
            result = await super().run_vae_stage(stage, hidden)
            return result[:, :5] if stage == 1 and hidden.shape[-1] == 16 else result

    async def scenario() -> None:
        engine, executor = make(LanePlanner(beside=0), Truncating(), chunking=STAGES)
        add(engine, 0, params(steps=1, height=32))
        add(engine, 1, params(steps=1, height=16, seed=1))
        ends = finished(await drain(engine))
        error = ends["r0"].error
        assert isinstance(error, ExecutionFailed) and "stage1" in error.message
        assert ends["r1"].image is not None
        assert [c.stage for c in executor.vae_calls if c.latent_hw == (16, 16)] == [0, 1]
        assert_empty(engine)

    asyncio.run(scenario())


def test_abort_between_chunks_ends_the_request_once_and_its_other_chunks_never_run() -> None:
    async def scenario() -> None:
        engine, executor = make(LanePlanner(beside=0, per_step=1), chunking=STAGES)
        add(engine, 0, params(steps=1))
        add(engine, 1, params(steps=1, seed=1, height=32))
        await engine.step()
        report = await engine.step()  # stage0 of both decodes
        assert [w.kind for w in report.chunks_after] == ["stage0", "stage0"] and engine.vae_chunk_backlog == 4
        event = engine.abort("r0")
        assert event is not None and isinstance(event.error, Cancelled) and event.image is None
        assert engine.vae_chunk_backlog == 2
        events = await drain(engine)
        assert list(finished(events)) == ["r1"]
        assert [c.stage for c in executor.vae_calls if c.latent_hw == (8, 8)] == [0]
        assert engine.abort("r0") is None
        assert_empty(engine)

    asyncio.run(scenario())


def test_abort_during_a_chunk_drops_the_rest_of_that_decode_in_the_same_lane() -> None:
    async def scenario() -> None:
        engine, executor = make(LanePlanner(beside=0), chunking=STAGES)
        add(engine, 0, params(steps=1))
        add(engine, 1, params(steps=1, seed=1, height=32))
        await engine.step()
        aborted: list[RequestFinished | None] = []
        executor.during_call = lambda: aborted.append(engine.abort("r0")) if not aborted else None
        report = await engine.step()  # r0: stage0 (aborted while it runs), stage1, stage2; then r1's three
        assert len(aborted) == 1 and aborted[0] is not None and isinstance(aborted[0].error, Cancelled)
        assert list(finished(report.events)) == ["r1"]
        runs = [(c.stage, c.latent_hw) for c in executor.vae_calls]
        assert runs == [(0, (8, 8)), (0, (16, 16)), (1, (16, 16)), (2, (16, 16))]
        assert_empty(engine)

    asyncio.run(scenario())


# -- every policy ------------------------------------------------------------------------------------

MIXED = [
    params(seed=1, steps=4, guidance=7.5, height=16),
    params(seed=2, steps=3, guidance=1.0, height=32, sampler=SamplerKind.EULER),
    params(seed=3, steps=6, guidance=5.0, height=16, width=32),
    params(seed=4, steps=2, guidance=7.5, height=32),
    params(seed=5, steps=5, guidance=1.0, height=16),
    params(seed=6, steps=7, guidance=7.5, height=16, sampler=SamplerKind.EULER),
    params(seed=7, steps=3, guidance=2.0, height=32, width=16),
    params(seed=8, steps=4, guidance=7.5, height=16),
]
ARRIVALS = (0, 0, 0, 1, 2, 2, 4, 6)  # the step before which each arrives


async def serve(engine: Engine) -> list[Event]:
    events: list[Event] = []
    for step_index in range(500):
        for tag, (request, arrival) in enumerate(zip(MIXED, ARRIVALS)):
            if arrival == step_index:
                add(engine, tag, request)
        if step_index > max(ARRIVALS) and not engine.has_work:
            return events
        events += (await engine.step()).events
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("chunking", [STAGES, TILES], ids=["stages", "tiles"])
def test_every_policy_drains_a_mixed_workload_with_one_final_event_per_request(chunking: ChunkingSpec) -> None:
    limits = Limits(STAGED, max_waiting_requests=64, max_running_requests=3)
    settings = PolicySettings(vae_chunking=chunking, static_max_queue_delay_s=0.0)
    images: dict[str, dict[str, np.ndarray]] = {}
    for name in POLICIES:
        policy = make_policy(name, limits, PROFILE, settings)
        engine = Engine(FakeExecutor(), policy.planner, limits, SCHEDULE, chunking=policy.chunking,
                        skip_cfg=policy.skip_cfg)
        events = asyncio.run(serve(engine))
        ends = [e for e in events if isinstance(e, RequestFinished)]
        assert sorted(e.request_id for e in ends) == sorted(f"r{tag}" for tag in range(len(MIXED))), name
        assert all(e.error is None and e.image is not None for e in ends), name
        assert_empty(engine)
        images[name] = {e.request_id: e.image for e in ends if e.image is not None}
    # Skip-CFG changes images, and tiles approximate them; without either, every policy gives the same image bit
    # for bit (batch-invariant rows, exact stages)
    exact = {name for name in POLICIES if make_policy(name, limits, PROFILE, settings).skip_cfg is None
             and make_policy(name, limits, PROFILE, settings).chunking.mode != "tiles"}
    assert exact == ({"sequential", "static", "continuous", "synerdiff-no-skip-cfg"} if chunking is STAGES
                     else {"sequential", "static", "continuous"})
    for name in sorted(exact):
        assert all(np.array_equal(images[name][rid], images["sequential"][rid]) for rid in images["sequential"]), name
