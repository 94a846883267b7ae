"""Workloads: who arrives when, asking for what. Shared by the simulator and the real-server benchmark.

A workload is a list of `Arrival`s (offset in seconds from the start, step count, guidance, prompt, and
optionally the image size and sampler). It is deterministic for a seed, so every policy of a side-by-side run
replays exactly the same one. A mix without sizes or samplers draws exactly what it drew before they existed
(the same random numbers in the same order), so older workloads stay reproducible; None leaves the choice to
the server (its default size, ddim).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

PROMPTS = (
    "a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen, studio lighting",
    "an astronaut riding a horse", "a watercolor of a harbor town", "a robot reading a book in a library",
    "a mountain lake at sunrise", "a cat wearing a tiny hat", "a futuristic city at night, neon",
    "a still life with lemons and a blue jug",
)


@dataclass(frozen=True)
class Arrival:
    time_s: float
    num_steps: int
    guidance_scale: float
    prompt: str = PROMPTS[0]
    seed: int = 0
    height: int | None = None
    width: int | None = None
    sampler: str | None = None


@dataclass(frozen=True)
class RequestMix:
    """Each request draws its step count, whether it uses classifier-free guidance and, when the mix lists
    them, its (height, width) and sampler."""

    steps: tuple[int, ...] = (20, 30, 50)
    guided_fraction: float = 0.8
    guidance_scale: float = 7.5
    sizes: tuple[tuple[int, int], ...] = ()  # (height, width) in pixels; () leaves it to the server
    samplers: tuple[str, ...] = ()  # () leaves it to the server

    def draw(self, rng: random.Random, time_s: float) -> Arrival:
        guided = rng.random() < self.guided_fraction
        arrival = Arrival(time_s, rng.choice(self.steps), self.guidance_scale if guided else 1.0,
                          rng.choice(PROMPTS), rng.randrange(2**31))
        # Drawn after the fields above, and only when listed, so a mix without them is unchanged.
        height, width = rng.choice(self.sizes) if self.sizes else (None, None)
        sampler = rng.choice(self.samplers) if self.samplers else None
        return replace(arrival, height=height, width=width, sampler=sampler)


def poisson_arrivals(rate_per_s: float, count: int, seed: int, mix: RequestMix = RequestMix()) -> list[Arrival]:
    rng = random.Random(seed)
    arrivals, now_s = [], 0.0
    for _ in range(count):
        now_s += rng.expovariate(rate_per_s)
        arrivals.append(mix.draw(rng, now_s))
    return arrivals


def bursty_arrivals(rate_per_s: float, count: int, seed: int, mix: RequestMix = RequestMix(),
                    burst_factor: float = 3.0, on_s: float = 10.0) -> list[Arrival]:
    """On/off bursts with the same mean rate: Poisson at burst_factor x rate for `on_s`, then silence
    long enough (on_s x (burst_factor - 1)) that the average is `rate_per_s`."""
    rng = random.Random(seed)
    off_s = on_s * (burst_factor - 1.0)
    arrivals, now_s, window_end = [], 0.0, on_s
    while len(arrivals) < count:
        now_s += rng.expovariate(rate_per_s * burst_factor)
        if now_s > window_end:
            now_s = window_end + off_s
            window_end = now_s + on_s
            continue
        arrivals.append(mix.draw(rng, now_s))
    return arrivals


# Arrival patterns by name, each called as (rate_per_s, count, seed, mix) -> arrivals.
ARRIVALS: dict[str, Callable[..., list[Arrival]]] = {"poisson": poisson_arrivals, "bursty": bursty_arrivals}
