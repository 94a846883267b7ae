"""Deterministic samplers (DDIM with eta=0, Euler without churn) as per-step linear coefficients.

Job: turn a request's sampler choice into a `SamplerPlan` once, at admission, so that the serving loop
can step a batch whose rows belong to different requests - at different steps, with different step
counts, even with different samplers - in one vectorised expression.

Invariants:
- Both samplers are linear in (sample, noise_pred) at every step, so step k of a plan is exactly
      unet_input  = sample * input_scales[k]          (the UNet sees timestep model_timesteps[k])
      next_sample = sample * sample_coefs[k] + noise_pred * noise_coefs[k]
  and reproduces diffusers' DDIMScheduler(eta=0) / EulerDiscreteScheduler(s_churn=0) up to float32
  rounding (tests/unit/test_sampler.py checks whole trajectories against diffusers step by step).
- Coefficients are computed in float64 and stored as read-only float32 arrays: plans are cached and
  shared between requests, so nobody may mutate them.
- `batched_step` and `guided_noise` are elementwise over rows: a row's result is bit-identical whether
  it is stepped alone or inside any batch, so batching never changes an image. They are written with operators
  only, so they step numpy arrays and device tensors alike (scheduler_backend/arrays.py).

Plans are numpy (host): this module runs inside the Triton Python backend, next to neither torch nor diffusers.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler_backend.arrays import Array, per_row


class SamplerKind(str, enum.Enum):
    DDIM = "ddim"
    EULER = "euler"


# Diffusers config keys that would make a step nonlinear or change the sigmas. A config that sets one
# of them to anything but its neutral value would be silently sampled wrong, so it is refused instead.
_NEUTRAL_CONFIG_VALUES: Mapping[str, tuple[object, ...]] = {
    "trained_betas": (None,),
    "clip_sample": (False,),
    "thresholding": (False,),
    "rescale_betas_zero_snr": (False,),
    "use_karras_sigmas": (False, None),
    "use_exponential_sigmas": (False, None),
    "use_beta_sigmas": (False, None),
    "interpolation_type": ("linear",),
    "final_sigmas_type": ("zero",),
    "timestep_type": ("discrete",),
}


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule and the timestep spacing, named as in diffusers' scheduler config."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    steps_offset: int = 1
    timestep_spacing: str = "leading"
    set_alpha_to_one: bool = False

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.beta_schedule not in ("linear", "scaled_linear"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r} unsupported: use 'linear' or 'scaled_linear'")
        if self.prediction_type != "epsilon":
            # v-prediction is linear too, but no served model needs it yet and it is untested here.
            raise ValueError(f"prediction_type {self.prediction_type!r} unsupported: only 'epsilon'")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(
                f"timestep_spacing {self.timestep_spacing!r} unsupported: use 'leading', 'trailing' or 'linspace'"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> NoiseSchedule:
        """Build from a diffusers-style scheduler config; keys this class does not model are ignored."""
        for key, neutral in _NEUTRAL_CONFIG_VALUES.items():
            if key in d and d[key] not in neutral:
                raise ValueError(f"scheduler config {key}={d[key]!r} unsupported (only {neutral!r})")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in d.items() if k in known}
        return cls(**kwargs)

    def alphas_cumprod(self) -> np.ndarray:
        """float64 [num_train_timesteps]: alpha-bar_t, the signal fraction left at training timestep t."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        else:  # scaled_linear: linear in sqrt(beta), as Stable Diffusion was trained
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        return np.cumprod(1.0 - betas)


@dataclass(frozen=True)
class SamplerPlan:
    """One request's whole trajectory; every array is read-only float32 [num_steps]."""

    kind: SamplerKind
    model_timesteps: np.ndarray
    input_scales: np.ndarray
    sample_coefs: np.ndarray
    noise_coefs: np.ndarray
    init_noise_sigma: float

    @property
    def num_steps(self) -> int:
        return int(self.model_timesteps.shape[0])


def _train_timesteps(schedule: NoiseSchedule, num_steps: int, *, round_linspace: bool) -> np.ndarray:
    """float64 [num_steps], descending: the training timesteps visited, spaced as diffusers does."""
    n_train = schedule.num_train_timesteps
    k = np.arange(num_steps, dtype=np.float64)
    if schedule.timestep_spacing == "leading":
        timesteps = (k * (n_train // num_steps)).round()[::-1] + schedule.steps_offset
    elif schedule.timestep_spacing == "trailing":
        # diffusers writes np.arange(n_train, 0, -ratio), which for some step counts (61, 103, ...)
        # yields a spurious extra timestep -1; n_train - k*ratio gives the same values, exactly num_steps.
        timesteps = np.round(n_train - k * (n_train / num_steps)) - 1
    else:  # linspace: DDIM rounds to integer timesteps, Euler keeps fractional ones
        timesteps = np.linspace(0, n_train - 1, num_steps, dtype=np.float64)[::-1]
        timesteps = timesteps.round() if round_linspace else timesteps
    if timesteps[0] > n_train - 1:
        # "leading" plus steps_offset overshoots at num_steps == n_train: diffusers' DDIM then indexes
        # past alphas_cumprod and its Euler feeds the UNet a timestep it was never trained on.
        raise ValueError(
            f"num_steps={num_steps} with 'leading' spacing and steps_offset={schedule.steps_offset} "
            f"reaches timestep {timesteps[0]:g}, past the last training timestep {n_train - 1}"
        )
    # The UNet is fed float32 timesteps, so every coefficient is derived from the float32 value.
    return timesteps.astype(np.float32).astype(np.float64)


# (model_timesteps, input_scales, sample_coefs, noise_coefs, init_noise_sigma), all float64
_Coefs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


def _ddim(schedule: NoiseSchedule, num_steps: int) -> _Coefs:
    alphas_cumprod = schedule.alphas_cumprod()
    final_alpha_cumprod = 1.0 if schedule.set_alpha_to_one else float(alphas_cumprod[0])
    timesteps = _train_timesteps(schedule, num_steps, round_linspace=True)
    # diffusers steps back by the fixed stride n_train // num_steps, not to the next listed timestep
    # (they differ for "linspace"); matching it keeps images identical to the reference pipeline.
    prev_timesteps = timesteps.astype(np.int64) - schedule.num_train_timesteps // num_steps
    alpha_t = alphas_cumprod[timesteps.astype(np.int64)]
    alpha_prev = np.where(prev_timesteps >= 0, alphas_cumprod[np.maximum(prev_timesteps, 0)], final_alpha_cumprod)
    # x_prev = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev) * eps, with x0_hat = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
    sample_coefs = np.sqrt(alpha_prev / alpha_t)
    noise_coefs = np.sqrt(1.0 - alpha_prev) - np.sqrt(alpha_prev * (1.0 - alpha_t) / alpha_t)
    return timesteps, np.ones(num_steps), sample_coefs, noise_coefs, 1.0


def _euler(schedule: NoiseSchedule, num_steps: int) -> _Coefs:
    alphas_cumprod = schedule.alphas_cumprod()
    timesteps = _train_timesteps(schedule, num_steps, round_linspace=False)
    train_sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    sigmas = np.interp(timesteps, np.arange(train_sigmas.shape[0]), train_sigmas)
    next_sigmas = np.append(sigmas[1:], 0.0)
    # epsilon prediction makes the ODE derivative the noise itself: x_next = x + (sigma_next - sigma) * eps
    noise_coefs = next_sigmas - sigmas
    input_scales = 1.0 / np.sqrt(sigmas**2 + 1.0)
    sigma_max = sigmas.max()
    # As diffusers does (legacy Stable Diffusion behaviour for "leading"), so seeds reproduce its latents.
    init_noise_sigma = sigma_max if schedule.timestep_spacing != "leading" else np.sqrt(sigma_max**2 + 1.0)
    return timesteps, input_scales, np.ones(num_steps), noise_coefs, float(init_noise_sigma)


def _frozen_f32(values: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(values, dtype=np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1024)
def make_sampler_plan(kind: SamplerKind, schedule: NoiseSchedule, num_steps: int) -> SamplerPlan:
    """Precompute a request's trajectory. Cached: requests share the returned (immutable) plan."""
    kind = SamplerKind(kind)
    if not 1 <= num_steps <= schedule.num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {schedule.num_train_timesteps}], got {num_steps}")
    build = _ddim if kind is SamplerKind.DDIM else _euler
    timesteps, input_scales, sample_coefs, noise_coefs, init_noise_sigma = build(schedule, num_steps)
    return SamplerPlan(
        kind=kind,
        model_timesteps=_frozen_f32(timesteps),
        input_scales=_frozen_f32(input_scales),
        sample_coefs=_frozen_f32(sample_coefs),
        noise_coefs=_frozen_f32(noise_coefs),
        init_noise_sigma=init_noise_sigma,
    )


def initial_latent(seed: int, shape: tuple[int, ...], init_noise_sigma: float) -> np.ndarray:
    """float32 starting latent; a pure function of (seed, shape) so a seed reproduces an image anywhere."""
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return noise * np.float32(init_noise_sigma)


def guided_noise(uncond: Array, cond: Array, guidance_scale: Array) -> Array:
    """Classifier-free guidance per row: uncond + g * (cond - uncond), for float32 [B, ...] rows and g [B], all on
    one `Arrays` implementation.

    Written as g*cond + (1-g)*uncond because that is exact at g=1: a row guided with g=1 equals the
    conditional prediction bit for bit, the same result as skipping its unconditional UNet row.
    """
    g = per_row(guidance_scale, cond)
    return cond * g + uncond * (1.0 - g)


def batched_step(samples: Array, noise_preds: Array, sample_coefs: Array, noise_coefs: Array) -> Array:
    """One sampler step for float32 [B, ...] rows, each with its own (plan, step) coefficients [B], all on one
    `Arrays` implementation."""
    if tuple(samples.shape) != tuple(noise_preds.shape):
        raise ValueError(f"samples {tuple(samples.shape)} and noise_preds {tuple(noise_preds.shape)} differ in shape")
    return samples * per_row(sample_coefs, samples) + noise_preds * per_row(noise_coefs, samples)
