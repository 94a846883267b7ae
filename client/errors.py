"""GenerationError and the mapping of tritonclient failures onto its codes.

Job: one exception type for every way a generation can fail, with a transport-independent code.

Invariants:
- `message` is the server's own text (it names the offending input), never rewritten;
- gRPC statuses arrive as strings such as "StatusCode.INVALID_ARGUMENT" and HTTP ones as "400";
- an error read off a gRPC stream without the `triton_grpc_error` header carries no status at all,
  so its code is guessed from the message, defaulting to INTERNAL.
"""

from __future__ import annotations

from typing import Literal

from tritonclient.utils import InferenceServerException

ErrorCode = Literal[
    "INVALID_ARGUMENT", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "NOT_FOUND", "INTERNAL"
]


class GenerationError(Exception):
    """A failed generation: `code` (an ErrorCode) and the server's `message`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        # args=(code, message) keeps the exception picklable across process pools.
        super().__init__(code, message)
        self.code: ErrorCode = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


_GRPC_CODES: dict[str, ErrorCode] = {
    "StatusCode.INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "StatusCode.OUT_OF_RANGE": "INVALID_ARGUMENT",
    "StatusCode.UNAVAILABLE": "UNAVAILABLE",
    # Triton answers a full queue with UNAVAILABLE; RESOURCE_EXHAUSTED means the same to a caller.
    "StatusCode.RESOURCE_EXHAUSTED": "UNAVAILABLE",
    "StatusCode.CANCELLED": "CANCELLED",
    "StatusCode.DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED",
    "StatusCode.NOT_FOUND": "NOT_FOUND",
}

_HTTP_CODES: dict[str, ErrorCode] = {
    "400": "INVALID_ARGUMENT",
    "404": "NOT_FOUND",
    "499": "CANCELLED",
    "503": "UNAVAILABLE",
    "504": "DEADLINE_EXCEEDED",
}


def _code_from_message(message: str) -> ErrorCode:
    """The code of an in-band stream error, from its wording: the server ends an overload with "retry later"
    and starts a cancellation with "request cancelled"; validation errors say what the field must be."""
    text = message.lower()
    if "cancel" in text:
        return "CANCELLED"
    if "retry later" in text or "unavailable" in text or "queue size" in text or "not ready" in text:
        return "UNAVAILABLE"
    if any(word in text for word in ("invalid", "expected", "must ", "out of range", "is required",
                                     "not a known", "unexpected")):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


def error_from_exception(exc: InferenceServerException) -> GenerationError:
    """Map a tritonclient exception (gRPC or HTTP) to a GenerationError."""
    message = exc.message() or str(exc)
    status = exc.status()
    if status is None:
        return GenerationError(_code_from_message(message), message)
    if status in _GRPC_CODES:
        return GenerationError(_GRPC_CODES[status], message)
    if status == "400" and "cancel" in message.lower():
        # Triton's HTTP endpoint reports CANCELLED as 400 too; only the text tells them apart.
        return GenerationError("CANCELLED", message)
    return GenerationError(_HTTP_CODES.get(status, "INTERNAL"), message)
