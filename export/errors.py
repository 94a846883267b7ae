"""Errors of the export package (import-light).

ExportError
 └── VerificationError: an exported graph disagrees with torch beyond the tolerance (export/verify.py)
Bad arguments raise ValueError; a missing checkpoint or vocab file raises FileNotFoundError.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export could not produce a valid model directory."""


class VerificationError(ExportError):
    """An exported graph disagrees with torch beyond the tolerance."""
