"""SynerDiff client: a typed API over tritonclient and the `synerdiff` command.

Importing the package loads tritonclient (gRPC and HTTP) and pillow, nothing server-side.
"""

from __future__ import annotations

from client.api import DiffusionClient, save_png
from client.contract import GeneratedImage, GenerationRequest
from client.errors import ErrorCode, GenerationError

__all__ = [
    "DiffusionClient",
    "ErrorCode",
    "GeneratedImage",
    "GenerationError",
    "GenerationRequest",
    "save_png",
]
