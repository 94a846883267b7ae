"""Generation requests: the typed parameters and the one validator at the boundary.

The validator takes the raw input tensors of a request exactly as the client sent them (a mapping from
the public input name to a numpy array, or None when the optional input was absent) and returns a
`GenerationParams`, or raises `InvalidArgument` naming the input and the allowed range. Nothing past
this module sees unvalidated data. The public input names are the model's input tensor names
(docs/interfaces.md), so an error message names exactly what the client sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from scheduler_backend.errors import InvalidArgument
from scheduler_backend.limits import Limits
from scheduler_backend.sampler import SamplerKind

PROMPT = "PROMPT"
NEGATIVE_PROMPT = "NEGATIVE_PROMPT"
PROMPT_EMBEDS = "PROMPT_EMBEDS"
STEPS = "STEPS"
GUIDANCE_SCALE = "GUIDANCE_SCALE"
SEED = "SEED"
HEIGHT = "HEIGHT"
WIDTH = "WIDTH"
SAMPLER = "SAMPLER"
PROGRESS = "PROGRESS"

GENERATION_INPUTS = (PROMPT, NEGATIVE_PROMPT, PROMPT_EMBEDS, STEPS, GUIDANCE_SCALE, SEED, HEIGHT, WIDTH,
                     SAMPLER, PROGRESS)

# Stop-by-request-id (for clients that cannot cancel, such as HTTP): a control request to `diffusion` that
# carries only STOP_REQUEST_ID and is answered with STOPPED, the number of live requests it stopped.
STOP_REQUEST_ID = "STOP_REQUEST_ID"
STOPPED = "STOPPED"

# Request parameters (Triton's per-request `parameters` map). Keys starting with "triton_" belong to Triton
# and its clients (e.g. triton_enable_empty_final_response) and are left alone; any other key is refused.
QUEUE_TIMEOUT_MS = "queue_timeout_ms"
REQUEST_PARAMETERS = (QUEUE_TIMEOUT_MS,)
MAX_QUEUE_TIMEOUT_MS = 3_600_000
TRITON_PARAMETER_PREFIX = "triton_"

RawFields = Mapping[str, "np.ndarray | None"]


@dataclass(frozen=True)
class PromptPair:
    """The texts to encode: the prompt and the negative (unconditional) prompt."""

    prompt: str
    negative_prompt: str


@dataclass(frozen=True)
class GenerationParams:
    """A validated request. `prompt` is None when the client sent precomputed embeddings."""

    prompts: PromptPair | None
    num_steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    sampler: SamplerKind
    progress: bool

    @property
    def uses_cfg(self) -> bool:
        """Classifier-free guidance needs the unconditional row too (diffusers: guidance_scale > 1)."""
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class RequestOptions:
    """What a request asked for through its parameters. `queue_timeout_s` is already capped by the
    server's own queue timeout; None means no timeout."""

    queue_timeout_s: float | None = None


def validate_parameters(parameters: Mapping[str, object], limits: Limits) -> RequestOptions:
    """Validate a request's parameters: only `REQUEST_PARAMETERS` (and Triton's own) are accepted."""
    for key in parameters:
        if not isinstance(key, str):
            raise InvalidArgument("parameters", "keys must be strings")
        if key not in REQUEST_PARAMETERS and not key.startswith(TRITON_PARAMETER_PREFIX):
            shown = key if len(key) <= 64 else key[:64] + "..."
            raise InvalidArgument(f"parameters.{shown}",
                                  f"is not a known request parameter (known: {', '.join(REQUEST_PARAMETERS)})")
    requested = parameters.get(QUEUE_TIMEOUT_MS)
    if requested is None:
        return RequestOptions(queue_timeout_s=limits.queue_timeout_s)
    if not isinstance(requested, int) or isinstance(requested, bool) or not 1 <= requested <= MAX_QUEUE_TIMEOUT_MS:
        raise InvalidArgument(f"parameters.{QUEUE_TIMEOUT_MS}",
                              f"must be an integer number of milliseconds in [1, {MAX_QUEUE_TIMEOUT_MS}]")
    timeout_s = requested / 1000
    if limits.queue_timeout_s is not None:
        timeout_s = min(timeout_s, limits.queue_timeout_s)
    return RequestOptions(queue_timeout_s=timeout_s)


def validate_request_id(request_id: object, limits: Limits, field: str) -> str:
    """A client-chosen request id (for stop-by-request-id): printable, at most `max_request_id_chars`."""
    if isinstance(request_id, (bytes, np.bytes_)):
        try:
            request_id = bytes(request_id).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(field, "must be valid UTF-8") from None
    if not isinstance(request_id, str):
        raise InvalidArgument(field, "must be a string")
    if len(request_id) > limits.max_request_id_chars:
        raise InvalidArgument(field, f"must be at most {limits.max_request_id_chars} characters")
    if not request_id.isprintable():
        raise InvalidArgument(field, "must be printable text")
    return request_id


def validate_stop(fields: RawFields, limits: Limits) -> str:
    """Validate a stop request: STOP_REQUEST_ID, non-empty, and no generation input beside it."""
    present = [name for name in GENERATION_INPUTS if fields.get(name) is not None]
    if present:
        raise InvalidArgument(STOP_REQUEST_ID, f"must be sent alone, got {', '.join(present)} too")
    return validate_stop_target(fields, STOP_REQUEST_ID, limits)


def validate_stop_target(fields: RawFields, name: str, limits: Limits) -> str:
    """The request id a stop names (input `name`): one non-empty request id."""
    request_id = validate_request_id(_single(fields, name), limits, name)
    if not request_id:
        raise InvalidArgument(name, "must not be empty")
    return request_id


def validate_prompts(fields: RawFields, limits: Limits) -> PromptPair:
    """Validate PROMPT (required) and NEGATIVE_PROMPT (optional, default "")."""
    prompt = _text(fields, PROMPT, limits, required=True)
    negative = _text(fields, NEGATIVE_PROMPT, limits, required=False)
    if not prompt.strip():
        raise InvalidArgument(PROMPT, "must not be empty")
    return PromptPair(prompt=prompt, negative_prompt=negative or "")


def validate_embeddings(fields: RawFields, limits: Limits) -> np.ndarray:
    """Validate PROMPT_EMBEDS: float32 [2, max_length, hidden] (row 0 unconditional, row 1 prompt), finite."""
    array = fields.get(PROMPT_EMBEDS)
    spec = limits.model
    expected = (2, spec.text_max_length, spec.text_hidden_size)
    if array is None:
        raise InvalidArgument(PROMPT_EMBEDS, "is required when PROMPT is absent")
    if array.dtype != np.float32:
        raise InvalidArgument(PROMPT_EMBEDS, f"must be FP32, got {array.dtype}")
    if tuple(array.shape) != expected:
        raise InvalidArgument(PROMPT_EMBEDS, f"must have shape {list(expected)}, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidArgument(PROMPT_EMBEDS, "must be finite (no NaN or inf)")
    return array


def validate_generation(fields: RawFields, limits: Limits, draw_seed: Callable[[], int]) -> GenerationParams:
    """Validate every generation input. Exactly one of PROMPT and PROMPT_EMBEDS must be present.

    `draw_seed` supplies the seed when SEED is absent (the response reports the seed used).
    """
    has_prompt = fields.get(PROMPT) is not None
    has_embeds = fields.get(PROMPT_EMBEDS) is not None
    if has_prompt and has_embeds:
        raise InvalidArgument(PROMPT_EMBEDS, "must not be sent together with PROMPT")
    if not has_prompt and not has_embeds:
        raise InvalidArgument(PROMPT, "is required (or send PROMPT_EMBEDS)")
    if has_embeds and fields.get(NEGATIVE_PROMPT) is not None:
        raise InvalidArgument(NEGATIVE_PROMPT, "must not be sent with PROMPT_EMBEDS (row 0 is the negative)")
    prompts = validate_prompts(fields, limits) if has_prompt else None
    if has_embeds:
        validate_embeddings(fields, limits)

    num_steps = _integer(fields, STEPS, 1, limits.max_steps, limits.default_steps)
    guidance = _real(fields, GUIDANCE_SCALE, 0.0, limits.max_guidance_scale, limits.default_guidance_scale)
    seed_value = _integer(fields, SEED, 0, limits.max_seed, None)
    seed = draw_seed() if seed_value is None else seed_value
    height = _size(fields, HEIGHT, limits)
    width = _size(fields, WIDTH, limits)
    sampler_name = _text(fields, SAMPLER, limits, required=False)
    sampler = SamplerKind.DDIM if sampler_name is None else _sampler(sampler_name)
    progress = _flag(fields, PROGRESS)
    return GenerationParams(prompts=prompts, num_steps=num_steps, guidance_scale=guidance, seed=seed,
                            height=height, width=width, sampler=sampler, progress=progress)


def _single(fields: RawFields, name: str) -> object | None:
    """The one element of a [1]-shaped input, or None when absent."""
    array = fields.get(name)
    if array is None:
        return None
    if array.size != 1:
        raise InvalidArgument(name, f"must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _text(fields: RawFields, name: str, limits: Limits, required: bool) -> str | None:
    value = _single(fields, name)
    if value is None:
        if required:
            raise InvalidArgument(name, "is required")
        return None
    if isinstance(value, np.str_):
        value = str(value).encode("utf-8")
    if not isinstance(value, (bytes, np.bytes_)):
        raise InvalidArgument(name, "must be a BYTES (UTF-8 string) tensor")
    raw = bytes(value)
    if len(raw) > 4 * limits.max_prompt_chars:
        raise InvalidArgument(name, f"must be at most {limits.max_prompt_chars} characters")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(name, "must be valid UTF-8") from None
    if len(text) > limits.max_prompt_chars:
        raise InvalidArgument(name, f"must be at most {limits.max_prompt_chars} characters, got {len(text)}")
    if "\x00" in text:
        raise InvalidArgument(name, "must not contain NUL characters")
    return text


def _integer(fields: RawFields, name: str, low: int, high: int, default: int | None) -> int | None:
    value = _single(fields, name)
    if value is None:
        return default
    if not isinstance(value, (np.integer, int)) or isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(name, f"must be an integer in [{low}, {high}]")
    number = int(value)
    if not low <= number <= high:
        raise InvalidArgument(name, f"must be in [{low}, {high}], got {number}")
    return number


def _real(fields: RawFields, name: str, low: float, high: float, default: float) -> float:
    value = _single(fields, name)
    if value is None:
        return default
    if not isinstance(value, (np.floating, np.integer, float, int)) or isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(name, f"must be a number in [{low}, {high}]")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidArgument(name, f"must be a finite number in [{low}, {high}], got {number}")
    return number


def _size(fields: RawFields, name: str, limits: Limits) -> int:
    spec = limits.model
    size = _integer(fields, name, spec.size_multiple, spec.max_size, spec.default_size)
    assert size is not None
    if size % spec.size_multiple:
        raise InvalidArgument(
            name, f"must be a multiple of {spec.size_multiple} in [{spec.size_multiple}, {spec.max_size}], got {size}")
    return size


def _sampler(name: str) -> SamplerKind:
    try:
        return SamplerKind(name.strip().lower())
    except ValueError:
        allowed = ", ".join(kind.value for kind in SamplerKind)
        raise InvalidArgument(SAMPLER, f"must be one of {allowed}, got {name!r}") from None


def _flag(fields: RawFields, name: str) -> bool:
    value = _single(fields, name)
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(name, "must be a BOOL")
    return bool(value)
