"""perf.workload's request mix with image sizes and samplers, and how perf.loadgen turns an arrival into a request."""

from __future__ import annotations

import random

from perf.loadgen import generation_request
from perf.workload import PROMPTS, Arrival, RequestMix, bursty_arrivals, poisson_arrivals


def arrivals_drawn_the_old_way(rate_per_s: float, count: int, seed: int, mix: RequestMix) -> list[Arrival]:
    """poisson_arrivals as it was before sizes and samplers existed: the draws, in their order."""
    rng = random.Random(seed)
    arrivals, now_s = [], 0.0
    for _ in range(count):
        now_s += rng.expovariate(rate_per_s)
        guided = rng.random() < mix.guided_fraction
        arrivals.append(Arrival(now_s, rng.choice(mix.steps), mix.guidance_scale if guided else 1.0,
                                rng.choice(PROMPTS), rng.randrange(2**31)))
    return arrivals


def test_a_mix_without_sizes_or_samplers_draws_the_same_workload_as_before() -> None:
    mix = RequestMix(steps=(4, 6, 8), guided_fraction=0.6)
    assert poisson_arrivals(2.0, 50, seed=7, mix=mix) == arrivals_drawn_the_old_way(2.0, 50, 7, mix)
    assert all(a.height is None and a.width is None and a.sampler is None
               for a in bursty_arrivals(2.0, 50, seed=7, mix=mix))


def test_a_mix_with_sizes_and_samplers_draws_them_and_keeps_the_other_fields() -> None:
    sizes, samplers = ((64, 64), (128, 64), (256, 256)), ("ddim", "euler")
    plain = RequestMix(steps=(4, 6, 8), guided_fraction=0.6)
    sized = RequestMix(steps=(4, 6, 8), guided_fraction=0.6, sizes=sizes, samplers=samplers)
    arrivals = poisson_arrivals(2.0, 200, seed=3, mix=sized)
    assert {(a.height, a.width) for a in arrivals} == set(sizes)
    assert {a.sampler for a in arrivals} == set(samplers)
    # The first arrival's own draws come first, so its time, steps, guidance, prompt and seed are unchanged.
    first_plain, first_sized = poisson_arrivals(2.0, 1, seed=3, mix=plain)[0], arrivals[0]
    assert (first_sized.time_s, first_sized.num_steps, first_sized.guidance_scale, first_sized.prompt,
            first_sized.seed) == (first_plain.time_s, first_plain.num_steps, first_plain.guidance_scale,
                                  first_plain.prompt, first_plain.seed)


def test_generation_request_carries_size_and_sampler_and_leaves_unset_ones_to_the_server() -> None:
    sized = generation_request(Arrival(0.0, 6, 1.0, "a cat", seed=9, height=128, width=64, sampler="euler"))
    assert (sized.prompt, sized.num_steps, sized.guidance_scale, sized.seed) == ("a cat", 6, 1.0, 9)
    assert (sized.height, sized.width, sized.sampler) == (128, 64, "euler")
    plain = generation_request(Arrival(0.0, 6, 7.5))
    assert (plain.height, plain.width, plain.sampler) == (None, None, None)
