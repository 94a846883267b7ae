"""scheduler_backend.request: the one validator at the boundary, fed tensors shaped like Triton's inputs."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.errors import InvalidArgument
from scheduler_backend.limits import Limits, ModelSpec
from scheduler_backend.request import (GENERATION_INPUTS, GUIDANCE_SCALE, HEIGHT, NEGATIVE_PROMPT, PROGRESS,
                                       PROMPT, PROMPT_EMBEDS, SAMPLER, SEED, STEPS, WIDTH, PromptPair,
                                       QUEUE_TIMEOUT_MS, RawFields, RequestOptions, validate_embeddings,
                                       validate_generation, validate_parameters, validate_prompts,
                                       validate_request_id, validate_stop, STOP_REQUEST_ID)
from scheduler_backend.sampler import SamplerKind

SPEC = ModelSpec(latent_channels=4, vae_scale_factor=2, text_max_length=77, text_hidden_size=32,
                 size_multiple=8, default_size=64, max_size=256)
LIMITS = Limits(SPEC)
DRAWN_SEED = 1234


def _draw_seed() -> int:
    return DRAWN_SEED


def _no_draw() -> int:
    raise AssertionError("draw_seed must not be called when SEED is sent")


def text(value: bytes) -> np.ndarray:
    return np.array([value], dtype=np.object_)


def int32(value: int) -> np.ndarray:
    return np.array([value], dtype=np.int32)


def int64(value: int) -> np.ndarray:
    return np.array([value], dtype=np.int64)


def fp32(value: float) -> np.ndarray:
    return np.array([value], dtype=np.float32)


def flag(value: bool) -> np.ndarray:
    return np.array([value], dtype=np.bool_)


def embeds(shape: tuple[int, ...] = (2, 77, 32), dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def fields(**inputs: np.ndarray) -> dict[str, np.ndarray | None]:
    """Every public input absent, except those given (PROMPT defaults to a valid prompt)."""
    raw: dict[str, np.ndarray | None] = {name: None for name in GENERATION_INPUTS}
    raw[PROMPT] = text(b"a cat")
    raw.update(inputs)
    return raw


def rejected(raw: RawFields, limits: Limits = LIMITS,
             draw_seed: Callable[[], int] = _draw_seed) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_generation(raw, limits, draw_seed)
    return caught.value


# -- defaults ----------------------------------------------------------------------------------------


def test_absent_optional_inputs_take_the_documented_defaults() -> None:
    params = validate_generation(fields(), LIMITS, _draw_seed)
    assert params.prompts == PromptPair(prompt="a cat", negative_prompt="")
    assert params.num_steps == 20
    assert params.guidance_scale == 7.5
    assert params.seed == DRAWN_SEED
    assert (params.height, params.width) == (SPEC.default_size, SPEC.default_size)
    assert params.sampler is SamplerKind.DDIM
    assert params.progress is False
    assert params.uses_cfg


def test_sent_inputs_are_used_and_the_seed_is_not_drawn() -> None:
    params = validate_generation(
        fields(NEGATIVE_PROMPT=text(b"blurry"), STEPS=int32(7), GUIDANCE_SCALE=fp32(1.0), SEED=int64(99),
               HEIGHT=int32(32), WIDTH=int32(128), SAMPLER=text(b"euler"), PROGRESS=flag(True)),
        LIMITS, _no_draw)
    assert params.prompts == PromptPair(prompt="a cat", negative_prompt="blurry")
    assert (params.num_steps, params.guidance_scale, params.seed) == (7, 1.0, 99)
    assert (params.height, params.width) == (32, 128)
    assert params.sampler is SamplerKind.EULER
    assert params.progress is True
    assert not params.uses_cfg  # guidance <= 1 means one UNet row


def test_sampler_name_is_case_and_space_insensitive() -> None:
    assert validate_generation(fields(SAMPLER=text(b" DDIM ")), LIMITS, _draw_seed).sampler is SamplerKind.DDIM


def test_unicode_numpy_prompt_is_accepted_like_bytes() -> None:
    raw = fields(PROMPT=np.array(["un chat é"]))
    assert validate_generation(raw, LIMITS, _draw_seed).prompts == PromptPair("un chat é", "")


def test_bounds_are_inclusive() -> None:
    params = validate_generation(
        fields(STEPS=int32(LIMITS.max_steps), GUIDANCE_SCALE=fp32(LIMITS.max_guidance_scale),
               SEED=int64(LIMITS.max_seed), HEIGHT=int32(SPEC.size_multiple), WIDTH=int32(SPEC.max_size)),
        LIMITS, _no_draw)
    assert (params.num_steps, params.guidance_scale, params.seed) == (150, 30.0, 2**63 - 1)
    assert (params.height, params.width) == (8, 256)
    assert validate_generation(fields(STEPS=int32(1), GUIDANCE_SCALE=fp32(0.0), SEED=int64(0)),
                               LIMITS, _no_draw).num_steps == 1


def test_prompt_of_exactly_max_chars_is_accepted() -> None:
    limits = Limits(SPEC, max_prompt_chars=10)
    prompt = "é" * 10  # 20 bytes: the limit is on characters, not bytes
    assert validate_prompts(fields(PROMPT=text(prompt.encode())), limits).prompt == prompt


# -- prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [b"", b"   ", b"\t\n "], ids=["empty", "spaces", "whitespace"])
def test_blank_prompt_is_rejected(prompt: bytes) -> None:
    error = rejected(fields(PROMPT=text(prompt)))
    assert error.field == PROMPT
    assert "empty" in error.message


@pytest.mark.parametrize("prompt", [b"x" * 11, "é".encode() * 11, b"x" * 41],
                         ids=["ascii", "two-byte", "over-4x-bytes"])
def test_too_long_prompt_is_rejected_naming_the_limit(prompt: bytes) -> None:
    error = rejected(fields(PROMPT=text(prompt)), Limits(SPEC, max_prompt_chars=10))
    assert error.field == PROMPT
    assert "at most 10 characters" in error.message


def test_default_prompt_limit_is_max_prompt_chars() -> None:
    assert validate_prompts(fields(PROMPT=text(b"x" * 2000)), LIMITS).prompt == "x" * 2000
    assert rejected(fields(PROMPT=text(b"x" * 2001))).field == PROMPT


@pytest.mark.parametrize("name", [PROMPT, NEGATIVE_PROMPT, SAMPLER])
def test_non_utf8_text_is_rejected(name: str) -> None:
    error = rejected(fields(**{name: text(b"caf\xe9 \xff")}))
    assert error.field == name
    assert "UTF-8" in error.message


@pytest.mark.parametrize("name", [PROMPT, NEGATIVE_PROMPT])
def test_nul_character_is_rejected(name: str) -> None:
    error = rejected(fields(**{name: text(b"a\x00cat")}))
    assert error.field == name
    assert "NUL" in error.message


def test_non_bytes_prompt_is_rejected() -> None:
    error = rejected(fields(PROMPT=int32(5)))
    assert error.field == PROMPT
    assert "BYTES" in error.message


def test_prompt_with_two_elements_is_rejected() -> None:
    error = rejected(fields(PROMPT=np.array([b"a", b"b"], dtype=np.object_)))
    assert error.field == PROMPT
    assert "[2]" in error.message


def test_whitespace_negative_prompt_is_kept() -> None:
    assert validate_prompts(fields(NEGATIVE_PROMPT=text(b"  ")), LIMITS).negative_prompt == "  "


# -- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 151, 10000, -1])
def test_steps_out_of_range_is_rejected_naming_the_range(value: int) -> None:
    error = rejected(fields(STEPS=int32(value)))
    assert error.field == STEPS
    assert "[1, 150]" in error.message


@pytest.mark.parametrize("array", [fp32(20.0), flag(True), text(b"20")], ids=["float", "bool", "bytes"])
def test_steps_not_an_integer_is_rejected(array: np.ndarray) -> None:
    error = rejected(fields(STEPS=array))
    assert error.field == STEPS
    assert "integer in [1, 150]" in error.message


@pytest.mark.parametrize("array", [np.array([20, 20], np.int32), np.array([], np.int32)], ids=["two", "none"])
def test_steps_of_wrong_shape_is_rejected(array: np.ndarray) -> None:
    error = rejected(fields(STEPS=array))
    assert error.field == STEPS
    assert "exactly one value" in error.message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, 30.5, 1e9])
def test_guidance_not_finite_or_out_of_range_is_rejected(value: float) -> None:
    error = rejected(fields(GUIDANCE_SCALE=fp32(value)))
    assert error.field == GUIDANCE_SCALE
    assert "[0.0, 30.0]" in error.message


def test_guidance_bool_is_rejected() -> None:
    assert rejected(fields(GUIDANCE_SCALE=flag(True))).field == GUIDANCE_SCALE


@pytest.mark.parametrize("array", [int64(-1), np.array([2**63], np.uint64), np.array([2**64 - 1], np.uint64)],
                         ids=["negative", "2**63", "uint64-max"])
def test_seed_out_of_range_is_rejected(array: np.ndarray) -> None:
    error = rejected(fields(SEED=array))
    assert error.field == SEED
    assert f"[0, {2**63 - 1}]" in error.message


def test_seed_above_a_configured_max_is_rejected() -> None:
    error = rejected(fields(SEED=int64(1001)), Limits(SPEC, max_seed=1000))
    assert error.field == SEED
    assert "[0, 1000]" in error.message


@pytest.mark.parametrize("name", [HEIGHT, WIDTH])
@pytest.mark.parametrize("value", [0, -8, 4, 264, 512])
def test_size_out_of_range_is_rejected_naming_the_range(name: str, value: int) -> None:
    error = rejected(fields(**{name: int32(value)}))
    assert error.field == name
    assert "[8, 256]" in error.message


@pytest.mark.parametrize("name", [HEIGHT, WIDTH])
@pytest.mark.parametrize("value", [12, 60, 250])
def test_size_not_a_multiple_is_rejected_naming_the_multiple(name: str, value: int) -> None:
    error = rejected(fields(**{name: int32(value)}))
    assert error.field == name
    assert "multiple of 8 in [8, 256]" in error.message


@pytest.mark.parametrize("name", [b"dpm", b"", b"ddim2"])
def test_unknown_sampler_is_rejected_naming_the_choices(name: bytes) -> None:
    error = rejected(fields(SAMPLER=text(name)))
    assert error.field == SAMPLER
    assert "ddim, euler" in error.message


@pytest.mark.parametrize("array", [int32(1), text(b"true"), fp32(1.0)], ids=["int", "bytes", "float"])
def test_progress_not_bool_is_rejected(array: np.ndarray) -> None:
    error = rejected(fields(PROGRESS=array))
    assert error.field == PROGRESS
    assert "BOOL" in error.message


# -- prompt or embeddings ---------------------------------------------------------------------------


def test_embeddings_alone_validate_without_prompts() -> None:
    params = validate_generation(fields(PROMPT=None, PROMPT_EMBEDS=embeds()), LIMITS, _draw_seed)
    assert params.prompts is None
    assert params.num_steps == 20


def test_prompt_with_embeddings_is_rejected() -> None:
    assert rejected(fields(PROMPT_EMBEDS=embeds())).field == PROMPT_EMBEDS


def test_neither_prompt_nor_embeddings_is_rejected() -> None:
    error = rejected(fields(PROMPT=None))
    assert error.field == PROMPT
    assert "PROMPT_EMBEDS" in error.message


def test_negative_prompt_with_embeddings_is_rejected() -> None:
    error = rejected(fields(PROMPT=None, PROMPT_EMBEDS=embeds(), NEGATIVE_PROMPT=text(b"blurry")))
    assert error.field == NEGATIVE_PROMPT


@pytest.mark.parametrize("shape", [(1, 77, 32), (2, 77, 16), (2, 76, 32), (2, 77), (3, 77, 32)])
def test_embeddings_of_wrong_shape_are_rejected_naming_the_shape(shape: tuple[int, ...]) -> None:
    error = rejected(fields(PROMPT=None, PROMPT_EMBEDS=embeds(shape)))
    assert error.field == PROMPT_EMBEDS
    assert "[2, 77, 32]" in error.message


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_embeddings_of_wrong_dtype_are_rejected(dtype: type) -> None:
    error = rejected(fields(PROMPT=None, PROMPT_EMBEDS=embeds(dtype=dtype)))
    assert error.field == PROMPT_EMBEDS
    assert "FP32" in error.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_embeddings_not_finite_are_rejected(bad: float) -> None:
    array = embeds()
    array[1, 5, 7] = bad
    error = rejected(fields(PROMPT=None, PROMPT_EMBEDS=array))
    assert error.field == PROMPT_EMBEDS
    assert "finite" in error.message


def test_validate_embeddings_returns_the_array_and_requires_it() -> None:
    array = embeds()
    assert validate_embeddings({PROMPT_EMBEDS: array}, LIMITS) is array
    assert pytest.raises(InvalidArgument, validate_embeddings, {}, LIMITS).value.field == PROMPT_EMBEDS


def test_validate_prompts_requires_prompt() -> None:
    assert pytest.raises(InvalidArgument, validate_prompts, {}, LIMITS).value.field == PROMPT


# -- totality --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(prompt=st.one_of(st.binary(max_size=64), st.text(max_size=16).map(str.encode)),
       steps=st.one_of(st.integers(min_value=-2**63, max_value=2**63 - 1), st.integers(-4, 160)))
def test_arbitrary_prompt_bytes_and_steps_validate_or_raise_invalid_argument(prompt: bytes, steps: int) -> None:
    raw = fields(PROMPT=text(prompt), STEPS=int64(steps))
    try:
        params = validate_generation(raw, LIMITS, _draw_seed)
    except InvalidArgument as error:
        assert error.field in (PROMPT, STEPS)
        return
    assert params.prompts is not None and params.prompts.prompt == prompt.decode("utf-8")
    assert params.prompts.prompt.strip() and "\x00" not in params.prompts.prompt
    assert params.num_steps == steps and 1 <= steps <= LIMITS.max_steps


# -- request parameters and ids ----------------------------------------------------------------------


def test_no_parameters_take_the_server_queue_timeout() -> None:
    assert validate_parameters({}, LIMITS) == RequestOptions(queue_timeout_s=None)
    assert validate_parameters({}, Limits(SPEC, queue_timeout_s=30.0)) == RequestOptions(queue_timeout_s=30.0)


def test_a_requested_queue_timeout_is_honoured_only_below_the_server_one() -> None:
    assert validate_parameters({QUEUE_TIMEOUT_MS: 2500}, LIMITS).queue_timeout_s == 2.5
    capped = Limits(SPEC, queue_timeout_s=1.0)
    assert validate_parameters({QUEUE_TIMEOUT_MS: 250}, capped).queue_timeout_s == 0.25
    assert validate_parameters({QUEUE_TIMEOUT_MS: 60_000}, capped).queue_timeout_s == 1.0


def test_tritons_own_parameters_are_left_alone() -> None:
    options = validate_parameters({"triton_enable_empty_final_response": True, QUEUE_TIMEOUT_MS: 5}, LIMITS)
    assert options.queue_timeout_s == 0.005


@pytest.mark.parametrize("key", ["priority", "timeout", "QUEUE_TIMEOUT_MS", "", "x" * 10_000])
def test_an_unknown_parameter_is_rejected_naming_it(key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_parameters({key: 1}, LIMITS)
    assert caught.value.field.startswith("parameters.") and key[:64] in caught.value.field
    assert len(caught.value.message) < 300 and QUEUE_TIMEOUT_MS in caught.value.message


@pytest.mark.parametrize("value", [0, -5, 3_600_001, 2**63, 1.5, "100", True, None])
def test_a_bad_queue_timeout_is_rejected_naming_the_parameter(value: object) -> None:
    if value is None:
        assert validate_parameters({QUEUE_TIMEOUT_MS: value}, LIMITS).queue_timeout_s is None
        return
    with pytest.raises(InvalidArgument) as caught:
        validate_parameters({QUEUE_TIMEOUT_MS: value}, LIMITS)
    assert caught.value.field == f"parameters.{QUEUE_TIMEOUT_MS}"


def test_request_ids_are_decoded_and_bounded() -> None:
    assert validate_request_id(b"job-1", LIMITS, "REQUEST_ID") == "job-1"
    assert validate_request_id("", LIMITS, "REQUEST_ID") == ""
    for bad in (b"\xff", "x" * 257, "a\nb", 7):
        with pytest.raises(InvalidArgument) as caught:
            validate_request_id(bad, LIMITS, "REQUEST_ID")
        assert caught.value.field == "REQUEST_ID"


def test_a_stop_request_carries_only_a_non_empty_request_id() -> None:
    stop = {**{name: None for name in GENERATION_INPUTS}, STOP_REQUEST_ID: text(b"job-7")}
    assert validate_stop(stop, LIMITS) == "job-7"
    with pytest.raises(InvalidArgument, match="must not be empty"):
        validate_stop({**stop, STOP_REQUEST_ID: text(b"")}, LIMITS)
    with pytest.raises(InvalidArgument, match="alone, got PROMPT") as caught:
        validate_stop({**stop, PROMPT: text(b"a cat")}, LIMITS)
    assert caught.value.field == STOP_REQUEST_ID
