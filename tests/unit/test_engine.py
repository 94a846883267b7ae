"""scheduler_backend.engine around a local fake executor: batching, bit-equality, aborts, failures, bounds."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.engine import Engine, Event, RequestFinished, StepProgress
from scheduler_backend.errors import Cancelled, ExecutionFailed, Overloaded
from scheduler_backend.limits import Limits, ModelSpec
from scheduler_backend.planner import ContinuousPlanner, Planner, SequentialPlanner, StaticPlanner
from scheduler_backend.request import GenerationParams
from scheduler_backend.sampler import NoiseSchedule, SamplerKind, initial_latent, make_sampler_plan
from scheduler_backend.vae_chunks import StageShapes

SPEC = ModelSpec(latent_channels=4, vae_scale_factor=2, text_max_length=77, text_hidden_size=32,
                 size_multiple=8, default_size=64, max_size=256)
VAE_STAGES = StageShapes(channels=(8, 6, 3), scales=(1, 1, 2))  # the fake decoder's stages (vae_stage_row)
SCHEDULE = NoiseSchedule()


# -- the fake executor -------------------------------------------------------------------------------


def embeddings(tag: int) -> np.ndarray:
    """[2, 77, 32] for request `r{tag}`; element [row, 0, 0] carries the row's id: 2*tag (unconditional),
    2*tag + 1 (prompt), so the executor can tell which request each UNet row belongs to."""
    array = np.random.default_rng(tag).standard_normal((2, 77, 32)).astype(np.float32) * np.float32(0.1)
    array[0, 0, 0], array[1, 0, 0] = 2 * tag, 2 * tag + 1
    return array


def unet_row(sample: np.ndarray, timestep: np.float32, embeds: np.ndarray) -> np.ndarray:
    """A deterministic function of one row only."""
    bias = np.float32(embeds.astype(np.float64).mean())
    return np.tanh(sample * np.float32(0.5) + timestep * np.float32(1e-3) + bias)


def vae_row(latent: np.ndarray) -> np.ndarray:
    """One raw latent [C, h, w] -> an image [3, 2h, 2w] in [-1, 1]. So sensitive that a latent one float32
    ulp off changes the uint8 image: bit-equality of images then means bit-equality of latents."""
    upsampled = latent[:3].repeat(SPEC.vae_scale_factor, axis=1).repeat(SPEC.vae_scale_factor, axis=2)
    return np.sin(upsampled.astype(np.float64) * 1e6).astype(np.float32)


@dataclass(frozen=True)
class UnetRecord:
    rows: tuple[int, ...]  # the row ids of embeddings()
    timesteps: tuple[float, ...]
    latent_hw: tuple[int, int]

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f"r{row // 2}" for row in self.rows))


def vae_stage_row(stage: int, hidden: np.ndarray) -> np.ndarray:
    """Stage `stage` of a three-stage decoder with VAE_STAGES geometry whose composition is exactly vae_row: the
    first two stages carry the latent's first three channels through unchanged, the last one is vae_row."""
    if stage == 0:
        return np.concatenate([hidden, -hidden])  # [8, h, w]
    if stage == 1:
        return np.concatenate([hidden[:3], hidden[4:7]])  # [6, h, w]
    return vae_row(hidden)  # [3, 2h, 2w] from hidden[:3]


@dataclass(frozen=True)
class VaeRecord:
    size: int
    latent_hw: tuple[int, int]
    stage: int | None = None  # run_vae_stage's stage; None for run_vae


@dataclass
class FakeExecutor:
    """Records every call; `fail_unet` / `fail_vae` pick calls to raise in; `during_call` runs while a
    call is awaited (as another task of the event loop would)."""

    fail_unet: Callable[[UnetRecord], bool] = lambda record: False
    fail_vae: Callable[[VaeRecord], bool] = lambda record: False
    during_call: Callable[[], None] = lambda: None
    unet_calls: list[UnetRecord] = field(default_factory=list)
    vae_calls: list[VaeRecord] = field(default_factory=list)
    log: list[UnetRecord | VaeRecord] = field(default_factory=list)

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        assert samples.dtype == timesteps.dtype == text_embeddings.dtype == np.float32
        assert samples.shape[0] == timesteps.shape[0] == text_embeddings.shape[0]
        record = UnetRecord(tuple(int(row) for row in text_embeddings[:, 0, 0]),
                            tuple(float(t) for t in timesteps), (samples.shape[2], samples.shape[3]))
        self.unet_calls.append(record)
        self.log.append(record)
        await asyncio.sleep(0)
        self.during_call()
        if self.fail_unet(record):
            raise RuntimeError("boom: /secret/path/unet.onnx")
        return np.stack([unet_row(s, t, e) for s, t, e in zip(samples, timesteps, text_embeddings)])

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        record = VaeRecord(latents.shape[0], (latents.shape[2], latents.shape[3]))
        self.vae_calls.append(record)
        self.log.append(record)
        await asyncio.sleep(0)
        self.during_call()
        if self.fail_vae(record):
            raise RuntimeError("boom: /secret/path/vae.onnx")
        return np.stack([vae_row(latent) for latent in latents])

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        record = VaeRecord(hidden.shape[0], (hidden.shape[2], hidden.shape[3]), stage)
        self.vae_calls.append(record)
        self.log.append(record)
        await asyncio.sleep(0)
        self.during_call()
        if self.fail_vae(record):
            raise RuntimeError("boom: /secret/path/vae_stage.onnx")
        return np.stack([vae_stage_row(stage, row) for row in hidden])


@dataclass
class GatedExecutor(FakeExecutor):
    """Holds every call until the test opens the gate."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        self.entered.set()
        await self.gate.wait()
        return await super().run_unet(samples, timesteps, text_embeddings)

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        self.entered.set()
        await self.gate.wait()
        return await super().run_vae(latents)

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        self.entered.set()
        await self.gate.wait()
        return await super().run_vae_stage(stage, hidden)


# -- helpers -----------------------------------------------------------------------------------------


def params(seed: int = 0, steps: int = 3, guidance: float = 7.5, height: int = 16, width: int | None = None,
           sampler: SamplerKind = SamplerKind.DDIM, progress: bool = False) -> GenerationParams:
    return GenerationParams(prompts=None, num_steps=steps, guidance_scale=guidance, seed=seed, height=height,
                            width=height if width is None else width, sampler=sampler, progress=progress)


def make_engine(executor: FakeExecutor | None = None, planner: Planner | None = None,
                max_waiting: int = 64, max_running: int = 16) -> tuple[Engine, FakeExecutor]:
    executor = FakeExecutor() if executor is None else executor
    limits = Limits(SPEC, max_waiting_requests=max_waiting, max_running_requests=max_running)
    planner = ContinuousPlanner(max_running) if planner is None else planner
    return Engine(executor, planner, limits, SCHEDULE), executor


def add(engine: Engine, tag: int, request: GenerationParams) -> str:
    request_id = f"r{tag}"
    engine.add(request_id, request, embeddings(tag))
    return request_id


async def drain(engine: Engine, limit: int = 500) -> list[Event]:
    events: list[Event] = []
    for _ in range(limit):
        if not engine.has_work:
            return events
        events += (await engine.step()).events
    raise AssertionError("the engine did not finish its requests")


def finished(events: Sequence[Event]) -> dict[str, RequestFinished]:
    ends = [event for event in events if isinstance(event, RequestFinished)]
    by_id = {event.request_id: event for event in ends}
    assert len(by_id) == len(ends), "a request finished twice"
    return by_id


def image_of(events: Sequence[Event], request_id: str) -> np.ndarray:
    event = finished(events)[request_id]
    assert event.error is None and event.image is not None
    return event.image


def assert_empty(engine: Engine) -> None:
    assert engine.live_request_ids == ()
    assert (engine.num_waiting, engine.num_denoising, engine.num_decoding) == (0, 0, 0)
    assert not engine.has_work


# -- continuous batching -----------------------------------------------------------------------------


def test_requests_join_at_the_next_step_and_leave_when_done() -> None:
    async def scenario() -> None:
        engine, executor = make_engine()
        add(engine, 0, params(steps=4))
        per_step: list[tuple[list[tuple[str, ...]], list[int], set[str]]] = []
        for step_index in range(6):
            if step_index == 1:
                add(engine, 1, params(steps=2, seed=1))
            unet_before, vae_before = len(executor.unet_calls), len(executor.vae_calls)
            report = await engine.step()
            per_step.append(([c.request_ids for c in executor.unet_calls[unet_before:]],
                             [c.size for c in executor.vae_calls[vae_before:]],
                             set(finished(report.events))))
        assert per_step == [
            ([("r0",)], [], set()),
            ([("r0", "r1")], [], set()),
            ([("r0", "r1")], [], set()),   # r1's last step: it leaves the UNet batch
            ([("r0",)], [1], {"r1"}),      # r0's last step beside r1's decode
            ([], [1], {"r0"}),
            ([], [], set()),
        ]
        assert_empty(engine)

    asyncio.run(scenario())


def test_different_steps_samplers_and_guidance_share_one_unet_call() -> None:
    async def scenario() -> None:
        engine, executor = make_engine()
        add(engine, 0, params(steps=4, guidance=7.5, sampler=SamplerKind.DDIM))
        add(engine, 1, params(steps=6, guidance=7.5, sampler=SamplerKind.EULER))
        add(engine, 2, params(steps=5, guidance=1.0, sampler=SamplerKind.DDIM))
        report = await engine.step()
        assert executor.unet_calls[0].rows == (0, 1, 2, 3, 5)  # CFG: 2 rows each; guidance 1: the prompt row only
        first = [make_sampler_plan(kind, SCHEDULE, steps).model_timesteps[0]
                 for kind, steps in ((SamplerKind.DDIM, 4), (SamplerKind.EULER, 6), (SamplerKind.DDIM, 5))]
        assert executor.unet_calls[0].timesteps == (first[0], first[0], first[1], first[1], first[2])
        assert (report.unet_calls, report.unet_rows, report.mixed_timestep_calls) == (1, 5, 1)
        events = await drain(engine)
        assert all(len(call.request_ids) > 1 for call in executor.unet_calls[:4])
        assert sorted(finished(events)) == ["r0", "r1", "r2"]

    asyncio.run(scenario())


def test_step_report_counts_mixed_timestep_calls_only_when_timesteps_differ() -> None:
    async def scenario() -> None:
        engine, _ = make_engine()
        add(engine, 0, params(steps=4))
        add(engine, 1, params(steps=4, seed=1, guidance=1.0))
        report = await engine.step()
        assert (report.unet_calls, report.unet_rows, report.mixed_timestep_calls, report.vae_images) == (1, 3, 0, 0)
        add(engine, 2, params(steps=4, seed=2))
        report = await engine.step()  # r2 at its first step, the others at their second
        assert (report.unet_calls, report.unet_rows, report.mixed_timestep_calls) == (1, 5, 1)

    asyncio.run(scenario())


def test_requests_of_different_sizes_go_to_different_unet_calls() -> None:
    async def scenario() -> None:
        engine, executor = make_engine()
        add(engine, 0, params(height=16))
        add(engine, 1, params(height=32))
        add(engine, 2, params(height=16, width=32))
        add(engine, 3, params(height=16, seed=3))
        report = await engine.step()
        assert report.unet_calls == 3
        by_shape = {call.latent_hw: call.request_ids for call in executor.unet_calls}
        assert by_shape == {(8, 8): ("r0", "r3"), (16, 16): ("r1",), (8, 16): ("r2",)}
        images = finished(await drain(engine))
        assert {rid: event.image.shape for rid, event in images.items() if event.image is not None} == {
            "r0": (16, 16, 3), "r1": (32, 32, 3), "r2": (16, 32, 3), "r3": (16, 16, 3)}
        assert all(event.image is not None and event.image.dtype == np.uint8 for event in images.values())

    asyncio.run(scenario())


# -- bit-equality ------------------------------------------------------------------------------------

CROWD = [
    params(seed=11, steps=6, guidance=7.5, height=32),
    params(seed=12, steps=3, guidance=1.0, height=32, sampler=SamplerKind.EULER),
    params(seed=13, steps=5, guidance=3.0, height=16),
    params(seed=14, steps=7, guidance=7.5, height=32, sampler=SamplerKind.EULER),
    params(seed=15, steps=2, guidance=7.5, height=32),
    params(seed=16, steps=4, guidance=0.5, height=32, width=16),
    params(seed=17, steps=5, guidance=12.0, height=32),
]
ARRIVALS = (0, 0, 1, 2, 3, 3, 5)  # the step before which each crowd member arrives


@pytest.mark.parametrize("target", [
    params(seed=42, steps=5, guidance=7.5, height=32),
    params(seed=43, steps=4, guidance=1.0, height=32, sampler=SamplerKind.EULER),
    params(seed=44, steps=6, guidance=3.0, height=32, sampler=SamplerKind.EULER, progress=True),
], ids=["ddim-cfg", "euler-no-cfg", "euler-cfg"])
def test_image_is_bit_identical_alone_or_among_staggered_requests(target: GenerationParams) -> None:
    async def alone() -> np.ndarray:
        engine, executor = make_engine()
        add(engine, 99, target)
        image = image_of(await drain(engine), "r99")
        assert all(call.request_ids == ("r99",) for call in executor.unet_calls)
        return image

    async def crowded() -> np.ndarray:
        engine, executor = make_engine()
        events: list[Event] = []
        for step_index in range(500):
            for tag, (request, arrival) in enumerate(zip(CROWD, ARRIVALS)):
                if arrival == step_index:
                    add(engine, tag, request)
            if step_index == 2:
                add(engine, 99, target)
            if step_index > max(ARRIVALS) and not engine.has_work:
                break
            events += (await engine.step()).events
        assert len(finished(events)) == 8
        shared = [call for call in executor.unet_calls if "r99" in call.request_ids]
        assert len(shared) == target.num_steps and all(len(call.request_ids) > 1 for call in shared)
        assert any(len(set(call.timesteps)) > 1 for call in shared)
        return image_of(events, "r99")

    assert np.array_equal(asyncio.run(alone()), asyncio.run(crowded()))


class SmoothVae(FakeExecutor):
    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        return np.tanh(latents[:, :3].repeat(2, axis=2).repeat(2, axis=3))


def reference_image(tag: int, request: GenerationParams) -> np.ndarray:
    """The request run the textbook way, one request and float64 guidance: unconditional row 0, prompt row 1."""
    plan = make_sampler_plan(request.sampler, SCHEDULE, request.num_steps)
    text = embeddings(tag)
    latent = initial_latent(request.seed, SPEC.latent_shape(request.height, request.width), plan.init_noise_sigma)
    for k in range(request.num_steps):
        model_input = latent * plan.input_scales[k]
        t = plan.model_timesteps[k]
        uncond, cond = (unet_row(model_input, t, text[row]).astype(np.float64) for row in (0, 1))
        noise = uncond + request.guidance_scale * (cond - uncond) if request.uses_cfg else cond
        latent = (latent * np.float64(plan.sample_coefs[k]) + noise * np.float64(plan.noise_coefs[k])).astype(
            np.float32)
    decoded = np.tanh(latent[:3].repeat(2, axis=1).repeat(2, axis=2).astype(np.float64))
    return (np.clip(decoded / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("target", [params(seed=5, steps=4, guidance=7.5, height=16, width=32),
                                    params(seed=6, steps=3, guidance=1.0, height=16, sampler=SamplerKind.EULER),
                                    params(seed=7, steps=5, guidance=4.0, height=32, sampler=SamplerKind.EULER)],
                         ids=["ddim-cfg", "euler-no-cfg", "euler-cfg"])
def test_batched_image_matches_a_plain_per_request_loop(target: GenerationParams) -> None:
    async def crowded() -> np.ndarray:
        engine, _ = make_engine(SmoothVae())
        for tag, request in enumerate(CROWD[:3]):
            add(engine, tag, request)
        add(engine, 99, target)
        return image_of(await drain(engine), "r99")

    image = asyncio.run(crowded())
    assert image.shape == (target.height, target.width, 3)
    difference = np.abs(image.astype(np.int16) - reference_image(99, target).astype(np.int16))
    assert difference.max() <= 1


def test_sequential_and_continuous_policies_give_the_same_images() -> None:
    async def run(planner: Planner) -> dict[str, np.ndarray]:
        engine, _ = make_engine(planner=planner)
        for tag, request in enumerate(CROWD):
            add(engine, tag, request)
        events = await drain(engine)
        return {rid: image_of(events, rid) for rid in finished(events)}

    sequential, continuous = asyncio.run(run(SequentialPlanner())), asyncio.run(run(ContinuousPlanner(16)))
    assert sequential.keys() == continuous.keys() and len(sequential) == len(CROWD)
    assert all(np.array_equal(sequential[rid], continuous[rid]) for rid in sequential)


def test_progress_events_count_every_step_before_the_final_event() -> None:
    async def scenario() -> None:
        engine, _ = make_engine()
        add(engine, 0, params(steps=3, progress=True))
        add(engine, 1, params(steps=2, progress=False))
        events = await drain(engine)
        progress = [(e.request_id, e.steps_done, e.num_steps) for e in events if isinstance(e, StepProgress)]
        assert progress == [("r0", 1, 3), ("r0", 2, 3), ("r0", 3, 3)]
        assert isinstance(events[-1], RequestFinished) and events[-1].request_id == "r0"

    asyncio.run(scenario())


# -- every request ends exactly once ---------------------------------------------------------------

# (kind, n, guidance, size): "add" a request of 1 + n % 3 steps; "abort" the (n % live)-th live request,
# now or while the next step awaits the executor; "step".
Op = tuple[str, int, float, int]
OPS = st.lists(st.tuples(st.sampled_from(["add", "add", "abort", "abort_in_call", "step", "step"]),
                         st.integers(0, 40), st.sampled_from([1.0, 7.5]), st.sampled_from([8, 16])),
               max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, fail_seed=st.integers(0, 2**16), policy=st.sampled_from(["continuous", "sequential"]))
def test_every_added_request_ends_with_exactly_one_final_event(ops: list[Op], fail_seed: int, policy: str) -> None:
    failures = random.Random(fail_seed)
    executor = FakeExecutor(fail_unet=lambda record: failures.random() < 0.15,
                            fail_vae=lambda record: failures.random() < 0.15)
    planner: Planner = ContinuousPlanner(3) if policy == "continuous" else SequentialPlanner()
    engine, _ = make_engine(executor, planner, max_waiting=4, max_running=3)
    accepted: list[str] = []
    events: list[Event] = []

    def abort(index: int) -> None:
        live = engine.live_request_ids
        if live:
            event = engine.abort(live[index % len(live)])
            assert event is not None and isinstance(event.error, Cancelled)
            events.append(event)

    async def scenario() -> None:
        for tag, (kind, n, guidance, size) in enumerate(ops):
            if kind == "add":
                try:
                    add(engine, tag, params(seed=tag, steps=1 + n % 3, guidance=guidance, height=size,
                                            progress=True))
                except Overloaded:
                    assert f"r{tag}" not in engine.live_request_ids
                else:
                    accepted.append(f"r{tag}")
            elif kind == "abort":
                abort(n)
            else:
                if kind == "abort_in_call":
                    executor.during_call = lambda: abort(n)
                events.extend((await engine.step()).events)
                executor.during_call = lambda: None
        events.extend(await drain(engine))

    asyncio.run(scenario())
    ends = Counter(event.request_id for event in events if isinstance(event, RequestFinished))
    assert ends == Counter(accepted)
    last = {event.request_id: index for index, event in enumerate(events) if isinstance(event, RequestFinished)}
    assert all(index < last[event.request_id] for index, event in enumerate(events)
               if isinstance(event, StepProgress))
    assert_empty(engine)


def test_seeded_random_arrivals_each_end_once_with_an_image() -> None:
    rng = random.Random(7)

    async def scenario() -> tuple[list[str], list[Event]]:
        engine, _ = make_engine(max_waiting=64, max_running=4)
        accepted: list[str] = []
        events: list[Event] = []
        for tag in range(40):
            for _ in range(rng.choice([0, 0, 1, 2])):
                accepted.append(add(engine, len(accepted), params(
                    seed=tag, steps=rng.randint(1, 4), guidance=rng.choice([1.0, 7.5]),
                    height=rng.choice([8, 16]), sampler=rng.choice(list(SamplerKind)))))
            events += (await engine.step()).events
        return accepted, events + await drain(engine)

    accepted, events = asyncio.run(scenario())
    ends = finished(events)
    assert sorted(ends) == sorted(accepted) and len(accepted) > 20
    assert all(event.error is None and event.image is not None for event in ends.values())


# -- abort -------------------------------------------------------------------------------------------


def test_abort_of_a_waiting_request_ends_it_and_nothing_runs() -> None:
    engine, executor = make_engine()
    add(engine, 0, params())
    event = engine.abort("r0")
    assert event is not None and event.request_id == "r0" and event.image is None
    assert isinstance(event.error, Cancelled)
    assert_empty(engine)
    assert asyncio.run(engine.step()).is_idle
    assert executor.log == []
    assert engine.abort("r0") is None


def test_abort_of_a_denoising_request_removes_it_from_the_batch() -> None:
    async def scenario() -> None:
        engine, executor = make_engine()
        add(engine, 0, params(steps=3))
        add(engine, 1, params(steps=3, seed=1))
        await engine.step()
        event = engine.abort("r0", ExecutionFailed("custom"))
        assert event is not None and isinstance(event.error, ExecutionFailed) and event.error.message == "custom"
        assert engine.live_request_ids == ("r1",) and engine.num_denoising == 1
        events = await drain(engine)
        assert list(finished(events)) == ["r1"]
        assert all(call.request_ids == ("r1",) for call in executor.unet_calls[1:])
        assert_empty(engine)

    asyncio.run(scenario())


def test_abort_of_a_decode_ready_request_skips_its_decode() -> None:
    async def scenario() -> None:
        engine, executor = make_engine()
        add(engine, 0, params(steps=1))
        await engine.step()
        assert engine.num_decoding == 1
        assert engine.abort("r0") is not None
        assert_empty(engine)
        assert (await engine.step()).is_idle
        assert executor.vae_calls == []

    asyncio.run(scenario())


def test_abort_during_an_awaited_unet_call_drops_that_request_result() -> None:
    async def scenario() -> None:
        executor = GatedExecutor()
        engine, _ = make_engine(executor)
        add(engine, 0, params(steps=2, progress=True))
        add(engine, 1, params(steps=2, seed=1, progress=True))
        step = asyncio.ensure_future(engine.step())
        await executor.entered.wait()
        assert engine.abort("r0") is not None
        add(engine, 2, params(steps=1, seed=2))  # added mid-step: waits for the next step
        executor.gate.set()
        report = await step
        assert report.events == (StepProgress("r1", 1, 2),)
        assert executor.unet_calls[0].request_ids == ("r0", "r1")
        events = await drain(engine)
        assert sorted(finished(events)) == ["r1", "r2"]
        assert all("r0" not in call.request_ids for call in executor.unet_calls[1:])
        assert executor.unet_calls[1].request_ids == ("r1", "r2")
        assert_empty(engine)

    asyncio.run(scenario())


def test_abort_during_an_awaited_vae_call_drops_that_request_image() -> None:
    async def scenario() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        engine, _ = make_engine(executor)
        add(engine, 0, params(steps=1))
        add(engine, 1, params(steps=1, seed=1))
        await engine.step()
        executor.gate.clear()
        executor.entered.clear()
        step = asyncio.ensure_future(engine.step())
        await executor.entered.wait()
        assert engine.abort("r1") is not None
        executor.gate.set()
        report = await step
        assert list(finished(report.events)) == ["r0"] and report.vae_chunks == 2
        assert_empty(engine)

    asyncio.run(scenario())


def test_fail_all_ends_every_live_request_in_every_state() -> None:
    async def scenario() -> None:
        engine, executor = make_engine()
        add(engine, 0, params(steps=1))
        add(engine, 1, params(steps=3))
        await engine.step()
        add(engine, 2, params())
        assert (engine.num_waiting, engine.num_denoising, engine.num_decoding) == (1, 1, 1)
        error = Overloaded("the server is shutting down")
        events = engine.fail_all(error)
        assert sorted(event.request_id for event in events) == ["r0", "r1", "r2"]
        assert all(event.error is error and event.image is None for event in events)
        assert_empty(engine)
        calls = len(executor.log)
        assert (await engine.step()).is_idle
        assert len(executor.log) == calls
        assert engine.fail_all(error) == []

    asyncio.run(scenario())


# -- failures ----------------------------------------------------------------------------------------


def test_a_failing_unet_call_fails_only_its_requests() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(fail_unet=lambda record: record.latent_hw == (8, 8))
        engine, _ = make_engine(executor)
        add(engine, 0, params(height=16))
        add(engine, 1, params(height=32, progress=True))
        add(engine, 2, params(height=16, seed=2))
        report = await engine.step()
        failed = finished(report.events)
        assert sorted(failed) == ["r0", "r2"]
        for event in failed.values():
            assert isinstance(event.error, ExecutionFailed) and event.image is None
            assert "boom" not in event.error.message and "/secret" not in event.error.message
        assert StepProgress("r1", 1, 3) in report.events
        assert engine.live_request_ids == ("r1",)
        assert sorted(finished(await drain(engine))) == ["r1"]
        assert_empty(engine)

    asyncio.run(scenario())


def test_a_synerdiff_error_from_the_executor_reaches_the_client_unchanged() -> None:
    async def scenario() -> None:
        error = ExecutionFailed("unet: out of memory")

        class Failing(FakeExecutor):
            async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray,
                               text_embeddings: np.ndarray) -> np.ndarray:
                raise error

        engine, _ = make_engine(Failing())
        add(engine, 0, params())
        (event,) = (await engine.step()).events
        assert isinstance(event, RequestFinished) and event.error is error
        assert_empty(engine)

    asyncio.run(scenario())


def test_a_failing_vae_call_fails_only_its_requests() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(fail_vae=lambda record: record.latent_hw == (16, 16))
        engine, _ = make_engine(executor)
        add(engine, 0, params(steps=1, height=16))
        add(engine, 1, params(steps=1, height=32))
        add(engine, 2, params(steps=1, height=32, seed=2))
        add(engine, 3, params(steps=3, height=16, seed=3))
        await engine.step()
        report = await engine.step()  # two VAE calls and a UNet call, at once
        assert (report.vae_chunks, report.unet_calls) == (3, 1)
        ends = finished(report.events)
        assert ends["r0"].image is not None and ends["r0"].error is None
        assert {rid for rid in ends if isinstance(ends[rid].error, ExecutionFailed)} == {"r1", "r2"}
        assert engine.live_request_ids == ("r3",)
        assert list(finished(await drain(engine))) == ["r3"]

    asyncio.run(scenario())


def test_a_unet_result_of_the_wrong_shape_fails_only_its_requests() -> None:
    class Truncating(FakeExecutor):
        async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray,
                           text_embeddings: np.ndarray) -> np.ndarray:
            result = await super().run_unet(samples, timesteps, text_embeddings)
            return result[:1] if samples.shape[-1] == 8 else result

    async def scenario() -> None:
        engine, _ = make_engine(Truncating())
        add(engine, 0, params(height=16))
        add(engine, 1, params(height=16, seed=1))
        add(engine, 2, params(height=32))
        report = await engine.step()
        ends = finished(report.events)
        assert sorted(ends) == ["r0", "r1"]
        assert all(isinstance(event.error, ExecutionFailed) for event in ends.values())
        assert engine.live_request_ids == ("r2",)

    asyncio.run(scenario())


def test_an_id_reused_after_abort_during_a_step_is_a_new_request() -> None:
    async def scenario() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        engine, _ = make_engine(executor)
        add(engine, 0, params(steps=1, seed=1))
        await engine.step()
        executor.gate.clear()
        executor.entered.clear()
        step = asyncio.ensure_future(engine.step())  # decodes r0
        await executor.entered.wait()
        assert engine.abort("r0") is not None
        engine.add("r0", params(steps=2, seed=2), embeddings(0))
        executor.gate.set()
        report = await step
        assert finished(report.events) == {}  # the old r0's image belongs to nobody
        assert engine.live_request_ids == ("r0",) and engine.num_waiting == 1
        events = await drain(engine)
        assert list(finished(events)) == ["r0"]

    asyncio.run(scenario())


# -- bounds ------------------------------------------------------------------------------------------


def test_add_beyond_max_waiting_requests_raises_overloaded_and_holds_nothing() -> None:
    async def scenario() -> None:
        engine, _ = make_engine(max_waiting=2, max_running=1)
        add(engine, 0, params())
        add(engine, 1, params())
        with pytest.raises(Overloaded) as caught:
            add(engine, 2, params())
        assert caught.value.message.endswith(Overloaded.RETRY_HINT)
        assert engine.live_request_ids == ("r0", "r1") and engine.num_waiting == 2
        await engine.step()  # admits r0 only (max_running_requests 1): one waiting slot frees
        assert (engine.num_waiting, engine.num_denoising) == (1, 1)
        add(engine, 2, params())
        assert engine.num_waiting == 2

    asyncio.run(scenario())


def test_add_of_a_live_request_id_is_refused() -> None:
    engine, _ = make_engine()
    add(engine, 0, params())
    with pytest.raises(ValueError, match="already live"):
        add(engine, 0, params())
    assert engine.num_waiting == 1


def test_continuous_planner_bounds_the_requests_denoising_at_once() -> None:
    async def scenario() -> None:
        engine, executor = make_engine(max_running=2)
        for tag in range(5):
            add(engine, tag, params(steps=2, seed=tag))
        await drain(engine)
        assert max(len(call.request_ids) for call in executor.unet_calls) == 2
        assert [call.request_ids for call in executor.unet_calls] == [
            ("r0", "r1"), ("r0", "r1"), ("r2", "r3"), ("r2", "r3"), ("r4",), ("r4",)]

    asyncio.run(scenario())


# -- sequential --------------------------------------------------------------------------------------


def test_sequential_planner_runs_one_request_at_a_time() -> None:
    async def scenario() -> None:
        engine, executor = make_engine(planner=SequentialPlanner())
        add(engine, 0, params(steps=2, height=16))
        add(engine, 1, params(steps=1, height=32, guidance=1.0))
        add(engine, 2, params(steps=3, height=16))
        order: list[str] = []
        while engine.has_work:
            report = await engine.step()
            assert report.unet_calls + report.vae_chunks == 1
            order += list(finished(report.events))
        assert order == ["r0", "r1", "r2"]
        trace = [f"unet:{','.join(c.request_ids)}" if isinstance(c, UnetRecord) else f"vae:{c.size}"
                 for c in executor.log]
        assert trace == ["unet:r0", "unet:r0", "vae:1", "unet:r1", "vae:1",
                         "unet:r2", "unet:r2", "unet:r2", "vae:1"]

    asyncio.run(scenario())


def test_places_reserved_by_the_caller_count_against_the_waiting_bound() -> None:
    engine, _ = make_engine(max_waiting=3, max_running=1)
    add(engine, 0, params())
    engine.ensure_capacity(reserved=1)  # 1 waiting + 1 being encoded < 3
    with pytest.raises(Overloaded):
        engine.ensure_capacity(reserved=2)


# -- queue timeout -----------------------------------------------------------------------------------


def test_a_request_waiting_past_its_queue_timeout_ends_overloaded_and_never_runs() -> None:
    async def scenario() -> None:
        now = [0.0]
        executor = FakeExecutor()
        limits = Limits(SPEC, max_running_requests=1)
        engine = Engine(executor, ContinuousPlanner(1), limits, SCHEDULE, clock=lambda: now[0])
        engine.add("r0", params(steps=3, seed=0), embeddings(0))
        engine.add("r1", params(steps=3, seed=1), embeddings(1), queue_timeout_s=1.5)
        engine.add("r2", params(steps=3, seed=2), embeddings(2), queue_timeout_s=100.0)
        events: list[Event] = []
        for _ in range(2):  # r0 runs; r1 and r2 wait behind it (one running at a time)
            events += (await engine.step()).events
            now[0] += 1.0
        assert engine.num_waiting == 2 and not finished(events)
        report = await engine.step()  # now 2.0 s: r1's deadline (1.5 s) has passed
        ends = finished(report.events)
        assert list(ends) == ["r1"] and isinstance(ends["r1"].error, Overloaded)
        assert "queue timeout" in ends["r1"].error.message
        events += report.events
        events += await drain(engine)
        ends = finished(events)
        assert ends["r0"].image is not None and ends["r2"].image is not None
        assert all("r1" not in call.request_ids for call in executor.unet_calls)
        assert_empty(engine)

    asyncio.run(scenario())


def test_an_idle_step_asks_to_be_woken_at_the_earliest_queue_deadline() -> None:
    async def scenario() -> None:
        now = [10.0]
        limits = Limits(SPEC)
        engine = Engine(FakeExecutor(), StaticPlanner(max_batch_size=4, max_queue_delay_s=30.0), limits, SCHEDULE,
                        clock=lambda: now[0])
        engine.add("r0", params(), embeddings(0), queue_timeout_s=2.0)
        report = await engine.step()  # the static planner waits for a fuller batch
        assert report.is_idle and report.retry_after_s == pytest.approx(2.0)
        now[0] += 2.0
        report = await engine.step()
        assert isinstance(finished(report.events)["r0"].error, Overloaded)
        assert_empty(engine)

    asyncio.run(scenario())
