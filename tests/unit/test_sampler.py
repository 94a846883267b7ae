"""scheduler_backend.sampler against diffusers' own schedulers, step by step, plus the batching invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from scheduler_backend.sampler import (
    NoiseSchedule,
    SamplerKind,
    SamplerPlan,
    batched_step,
    guided_noise,
    initial_latent,
    make_sampler_plan,
)

SPACINGS = ("leading", "trailing", "linspace")
STEP_COUNTS = (1, 2, 4, 7, 20, 50)  # 7 divides neither 1000 nor 999: uneven strides
LATENT_SHAPE = (1, 4, 8, 8)

# Tolerance for UNet inputs and samples, relative to the largest magnitude in the reference tensor at
# that step: elementwise relative error is meaningless for entries that happen to cross zero, and the
# float32 error of a step scales with the tensor's magnitude, not with each entry's.
# Our coefficients come from a float64 schedule, diffusers' from a float32 one (float32 betas, cumprod
# and sigmas) and it evaluates the step formulas in a different order, so bit equality is not expected.
# Worst error observed over every (kind, spacing, step count) below: 5.2e-6 (Euler, trailing, 7 steps,
# sample after the last step); DDIM's worst is 1.2e-6 (trailing, 50 steps).
SCALE_RTOL = 1e-5
# diffusers forms sigma = sqrt((1 - alpha_bar) / alpha_bar) in float32, and 1 - alpha_bar cancels
# catastrophically near t=0 (alpha_bar[0] = 0.99915). Worst observed: 1.3e-5 (Euler, linspace, 1 step,
# whose only sigma is sigma(t=0)); elsewhere <= 4.4e-7.
INIT_NOISE_SIGMA_RTOL = 5e-5


def _fake_unet(unet_input: np.ndarray, timestep: float) -> np.ndarray:
    """A fixed nonlinear 'noise prediction', so an input error would propagate into the trajectory."""
    x = unet_input.astype(np.float64)
    t = float(timestep) / 1000.0
    return (np.tanh(0.8 * x + t) + 0.3 * np.sin(3.0 * x * (1.0 + t)) - 0.1 * t).astype(np.float32)


def _reference_scheduler(
    kind: SamplerKind, schedule: NoiseSchedule
) -> DDIMScheduler | EulerDiscreteScheduler:
    config = dataclasses.asdict(schedule)
    if kind is SamplerKind.DDIM:
        # clip_sample defaults to True in DDIMScheduler; Stable Diffusion configs turn it off.
        return DDIMScheduler(**config, clip_sample=False)
    del config["set_alpha_to_one"]  # a DDIM-only option
    return EulerDiscreteScheduler(**config)


def _scale_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def _step_alone(samples: np.ndarray, noise_preds: np.ndarray, plan: SamplerPlan, k: int) -> np.ndarray:
    return batched_step(samples, noise_preds, plan.sample_coefs[k : k + 1], plan.noise_coefs[k : k + 1])


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("kind", list(SamplerKind))
def test_trajectory_matches_diffusers(kind: SamplerKind, spacing: str, num_steps: int) -> None:
    schedule = NoiseSchedule(timestep_spacing=spacing)
    plan = make_sampler_plan(kind, schedule, num_steps)
    reference = _reference_scheduler(kind, schedule)
    reference.set_timesteps(num_steps)
    assert plan.num_steps == len(reference.timesteps) == num_steps
    assert plan.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=INIT_NOISE_SIGMA_RTOL)

    ours = initial_latent(seed=1234, shape=LATENT_SHAPE, init_noise_sigma=plan.init_noise_sigma)
    theirs = torch.from_numpy(ours.copy())
    for k, timestep in enumerate(reference.timesteps):
        assert plan.model_timesteps[k] == np.float32(timestep.item())

        our_input = ours * plan.input_scales[k]
        their_input = reference.scale_model_input(theirs, timestep).numpy()
        assert _scale_error(our_input, their_input) <= SCALE_RTOL, f"UNet input, step {k}"

        our_noise = _fake_unet(our_input, plan.model_timesteps[k])
        their_noise = _fake_unet(their_input, timestep.item())
        ours = _step_alone(ours, our_noise, plan, k)
        theirs = reference.step(torch.from_numpy(their_noise), timestep, theirs).prev_sample
        assert ours.dtype == np.float32
        assert _scale_error(ours, theirs.numpy()) <= SCALE_RTOL, f"sample after step {k}"


def test_plan_is_cached_and_read_only() -> None:
    plan = make_sampler_plan(SamplerKind.EULER, NoiseSchedule(), 20)
    assert make_sampler_plan(SamplerKind.EULER, NoiseSchedule(), 20) is plan
    for values in (plan.model_timesteps, plan.input_scales, plan.sample_coefs, plan.noise_coefs):
        assert values.dtype == np.float32 and values.shape == (20,)
        with pytest.raises(ValueError):
            values[0] = 0.0


def test_trailing_has_exactly_num_steps_where_diffusers_adds_one() -> None:
    # np.arange(1000, 0, -1000 / 61) has 62 elements, so diffusers appends a bogus timestep -1.
    plan = make_sampler_plan(SamplerKind.DDIM, NoiseSchedule(timestep_spacing="trailing"), 61)
    assert plan.num_steps == 61
    assert plan.model_timesteps[0] == 999 and plan.model_timesteps[-1] >= 0


def test_mixed_batch_equals_rows_stepped_alone() -> None:
    schedule = NoiseSchedule()
    rows = [  # (plan, step index): different kinds, spacings, step counts and progress
        (make_sampler_plan(SamplerKind.DDIM, schedule, 20), 0),
        (make_sampler_plan(SamplerKind.EULER, schedule, 50), 17),
        (make_sampler_plan(SamplerKind.DDIM, dataclasses.replace(schedule, timestep_spacing="trailing"), 4), 3),
        (make_sampler_plan(SamplerKind.EULER, dataclasses.replace(schedule, timestep_spacing="linspace"), 7), 6),
        (make_sampler_plan(SamplerKind.DDIM, schedule, 1), 0),
    ]
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((len(rows), 4, 8, 8), dtype=np.float32)
    noise_preds = rng.standard_normal((len(rows), 4, 8, 8), dtype=np.float32)
    sample_coefs = np.array([plan.sample_coefs[k] for plan, k in rows], dtype=np.float32)
    noise_coefs = np.array([plan.noise_coefs[k] for plan, k in rows], dtype=np.float32)

    batched = batched_step(samples, noise_preds, sample_coefs, noise_coefs)

    for i, (plan, k) in enumerate(rows):
        alone = _step_alone(samples[i : i + 1], noise_preds[i : i + 1], plan, k)
        assert np.array_equal(batched[i : i + 1], alone), f"row {i}"


def test_guided_noise() -> None:
    rng = np.random.default_rng(1)
    uncond = rng.standard_normal((3, 4, 8, 8), dtype=np.float32)
    cond = rng.standard_normal((3, 4, 8, 8), dtype=np.float32)
    assert np.array_equal(guided_noise(uncond, cond, np.ones(3, dtype=np.float32)), cond)
    assert np.array_equal(guided_noise(uncond, cond, np.zeros(3, dtype=np.float32)), uncond)

    scales = np.array([1.0, 7.5, 3.0], dtype=np.float32)
    guided = guided_noise(uncond, cond, scales)
    assert guided.dtype == np.float32
    expected = uncond + scales[:, None, None, None] * (cond - uncond)
    np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)


def test_initial_latent_is_seeded_and_scaled() -> None:
    latent = initial_latent(seed=7, shape=(1, 4, 8, 8), init_noise_sigma=14.6)
    assert latent.dtype == np.float32 and latent.shape == (1, 4, 8, 8)
    unit = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    assert np.array_equal(latent, unit * np.float32(14.6))


@pytest.mark.parametrize("num_steps", [0, 1001])
def test_rejects_out_of_range_step_counts(num_steps: int) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        make_sampler_plan(SamplerKind.DDIM, NoiseSchedule(), num_steps)


def test_rejects_leading_spacing_that_overshoots_the_training_range() -> None:
    # steps 0, 1, ..., 999 plus steps_offset=1 would end at timestep 1000; trailing stays in range.
    with pytest.raises(ValueError, match="num_steps"):
        make_sampler_plan(SamplerKind.EULER, NoiseSchedule(timestep_spacing="leading"), 1000)
    assert make_sampler_plan(SamplerKind.DDIM, NoiseSchedule(timestep_spacing="trailing"), 1000).num_steps == 1000


def test_rejects_unsupported_prediction_type() -> None:
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule.from_dict({"prediction_type": "v_prediction"})


def test_from_dict_reads_a_diffusers_config() -> None:
    # Stable Diffusion 1.x's scheduler_config.json (a PNDM config, reused for DDIM/Euler).
    config: dict[str, object] = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }
    assert NoiseSchedule.from_dict(config) == NoiseSchedule()
    with pytest.raises(ValueError, match="clip_sample"):
        NoiseSchedule.from_dict({**config, "clip_sample": True})
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        NoiseSchedule.from_dict({**config, "use_karras_sigmas": True})
