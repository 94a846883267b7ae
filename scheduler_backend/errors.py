"""The one error hierarchy of the SynerDiff core.

Every failure the core reports to a client is a `SynerDiffError`. Each subclass names one outcome that a
client can act on, and the Triton edge maps each to one Triton error code (and nothing else does):

- `InvalidArgument`  -> INVALID_ARG: the request is wrong; `field` names the offending input.
- `Overloaded`       -> UNAVAILABLE: the waiting queue is full, or the server is shutting down; retry later.
- `Cancelled`        -> CANCELLED: the client cancelled; its work has stopped.
- `ExecutionFailed`  -> INTERNAL: a model call failed; only the requests of that call are failed.

Messages are written for clients: they name the field and the allowed range, never a path or a traceback.
"""

from __future__ import annotations


class SynerDiffError(Exception):
    """Base of every error the core reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SynerDiffError):
    """A request field is missing, malformed or out of range."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Overloaded(SynerDiffError):
    """The server cannot take the request now (queue full, shutting down). Messages end with
    `RETRY_HINT`, which is also how an overload is recognised after a hop that loses error codes."""

    RETRY_HINT = "retry later"

    def __init__(self, reason: str) -> None:
        super().__init__(reason if reason.endswith(self.RETRY_HINT) else f"{reason}; {self.RETRY_HINT}")


class Cancelled(SynerDiffError):
    """The client cancelled the request (or stopped it by its request id). Messages start with `PREFIX`,
    which is also how a cancellation is recognised after a hop that loses error codes."""

    PREFIX = "request cancelled"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason if reason.startswith(self.PREFIX) else f"{self.PREFIX}: {reason}".rstrip(": "))


class ExecutionFailed(SynerDiffError):
    """A model call (UNet, VAE, text encoder) failed for the requests it carried."""
