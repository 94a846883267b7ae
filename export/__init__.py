"""Model export: presets or a local diffusers checkpoint -> ONNX graphs, tokenizer.json and manifest.json.

The directory it writes is the contract of docs/interfaces.md. Entry points: ``export_models`` (library),
``build_components`` (the torch modules behind an export), ``python -m export`` (CLI, export/cli.py).
Heavy dependencies (torch, diffusers, transformers, onnx) are imported lazily, on first use of these names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_components", "export_models", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "export_models":
        from export.exporter import export_models

        return export_models
    if name in ("build_components", "load_checkpoint"):
        from export import components

        return getattr(components, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
