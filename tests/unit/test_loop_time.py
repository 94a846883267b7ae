"""What a step reports of its own time (StepReport.loop_own_s): the real time outside model calls, with the UNet
calls and the VAE lane counted once while they overlap."""

from __future__ import annotations

import asyncio

import numpy as np

from scheduler_backend.engine import _ModelCallTime
from tests.unit.test_engine import FakeExecutor, add, make_engine, params

UNET_S = 0.2


class SlowUnet(FakeExecutor):
    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        await asyncio.sleep(UNET_S)
        return await super().run_unet(samples, timesteps, text_embeddings)


def test_a_steps_own_time_leaves_out_its_model_call() -> None:
    engine, _ = make_engine(SlowUnet())
    add(engine, 1, params(steps=2))
    report = asyncio.run(engine.step())
    assert report.unet_calls == 1
    assert 0.0 < report.loop_own_s <= report.latency_s - UNET_S


def test_overlapping_model_calls_count_once() -> None:
    async def both() -> float:
        timer = _ModelCallTime()
        await asyncio.gather(timer.timed(asyncio.sleep(0.2)), timer.timed(asyncio.sleep(0.15)))
        await timer.timed(asyncio.sleep(0.05))  # after the others: counted on its own
        return timer.seconds

    seconds = asyncio.run(both())
    assert 0.25 <= seconds < 0.35  # 0.2 + 0.05 with scheduling slack; their sum would be 0.4
