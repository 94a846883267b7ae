"""The model I/O contract of docs/interfaces.md as the client sees it.

Job: the request/result value types, turning a request into input arrays, and decoding one response.

Invariants:
- only the fields the caller set become inputs; an absent optional input takes the server's default
  (STEPS 20, GUIDANCE_SCALE 7.5, random SEED, the model's default size, SAMPLER ddim, no PROGRESS);
- every input is a 1-element tensor of shape [1] with the contract's datatype (BYTES, INT32, INT64,
  FP32, BOOL); an integer that does not fit its datatype is refused here, naming the input, because
  numpy would otherwise wrap it silently;
- a progress response has IMAGE of shape [0, 0, 3]; a final image is uint8 [H, W, 3] with H, W > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from client.errors import GenerationError

STREAMING_MODEL = "diffusion"
UNARY_MODEL = "txt2img_unary"
STOP_MODEL = "stop"  # stop-by-request-id: REQUEST_ID in, STOPPED (how many) out
STOP_INPUT = "REQUEST_ID"
STOP_OUTPUT = "STOPPED"
SAMPLERS = ("ddim", "euler")

# The non-decoupled model answers once per request, so it has no PROGRESS input.
MODELS_WITHOUT_PROGRESS = frozenset({UNARY_MODEL})

OUTPUT_NAMES = ("IMAGE", "STEP", "SEED_USED")
FINAL_FLAG_PARAMETER = "triton_final_response"

_INT32_RANGE = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
_INT64_RANGE = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)


@dataclass(frozen=True)
class GenerationRequest:
    """One text-to-image request; None means "let the server choose"."""

    prompt: str
    negative_prompt: str | None = None
    num_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    sampler: str | None = None


# eq=False: comparing images element-wise is not what == on a result should mean.
@dataclass(frozen=True, eq=False)
class GeneratedImage:
    """A finished image (uint8 [H, W, 3], possibly read-only), the seed and steps used, and the
    wall time from sending the request to receiving the final response."""

    image: np.ndarray
    seed: int
    num_steps: int
    latency_s: float


@dataclass(frozen=True)
class DecodedResponse:
    """What one response says: a progress tick (image None) or the finished image."""

    image: np.ndarray | None
    step: int | None
    seed: int | None
    final: bool


class InferResultLike(Protocol):
    """What tritonclient's gRPC and HTTP InferResult have in common."""

    def as_numpy(self, name: str) -> np.ndarray | None: ...


def _int_array(
    name: str, value: int, dtype: type[np.integer], bounds: tuple[int, int]
) -> np.ndarray:
    if not bounds[0] <= value <= bounds[1]:
        raise GenerationError(
            "INVALID_ARGUMENT", f"{name}={value} does not fit in {np.dtype(dtype).name.upper()}"
        )
    return np.array([value], dtype=dtype)


def _text_array(value: str) -> np.ndarray:
    return np.array([value.encode("utf-8")], dtype=np.object_)


def input_arrays(request: GenerationRequest, progress: bool) -> dict[str, np.ndarray]:
    """The input tensors for `request`, by contract name, in a stable order."""
    arrays: dict[str, np.ndarray] = {"PROMPT": _text_array(request.prompt)}
    if request.negative_prompt is not None:
        arrays["NEGATIVE_PROMPT"] = _text_array(request.negative_prompt)
    if request.num_steps is not None:
        arrays["STEPS"] = _int_array("STEPS", request.num_steps, np.int32, _INT32_RANGE)
    if request.guidance_scale is not None:
        arrays["GUIDANCE_SCALE"] = np.array([request.guidance_scale], dtype=np.float32)
    if request.seed is not None:
        arrays["SEED"] = _int_array("SEED", request.seed, np.int64, _INT64_RANGE)
    if request.height is not None:
        arrays["HEIGHT"] = _int_array("HEIGHT", request.height, np.int32, _INT32_RANGE)
    if request.width is not None:
        arrays["WIDTH"] = _int_array("WIDTH", request.width, np.int32, _INT32_RANGE)
    if request.sampler is not None:
        arrays["SAMPLER"] = _text_array(request.sampler)
    if progress:
        # Sent only when wanted: False is the server default, and unary models lack the input.
        arrays["PROGRESS"] = np.array([True], dtype=np.bool_)
    return arrays


def _scalar(result: InferResultLike, name: str) -> int | None:
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    return int(array.reshape(-1)[0])


def decode_result(result: InferResultLike, final: bool) -> DecodedResponse:
    """Decode one response; `final` is the response's final flag (True for unary calls).

    Raises GenerationError("INTERNAL") when a final response breaks the contract.
    """
    image = result.as_numpy("IMAGE")
    step = _scalar(result, "STEP")
    seed = _scalar(result, "SEED_USED")
    if image is not None and image.size == 0:
        image = None  # a progress response: IMAGE is [0, 0, 3]
    if image is not None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise GenerationError(
                "INTERNAL", f"IMAGE must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}"
            )
        if step is None or seed is None:
            raise GenerationError("INTERNAL", "a response with an IMAGE lacks STEP or SEED_USED")
    return DecodedResponse(image=image, step=step, seed=seed, final=final)
