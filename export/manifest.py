"""manifest.json (the contract of docs/interfaces.md) and export_info.json (provenance, for humans and for the
"already exported?" check).

Invariants: manifest.json holds exactly the documented keys and is written last, atomically, so its presence
means every file it names is complete; a failed or interrupted export leaves no manifest. Provenance (seed,
source, tokenizer kind, format version, versions, timings, ORT-vs-torch differences) lives in export_info.json,
not in the manifest. A directory written by another EXPORT_FORMAT_VERSION is never up to date.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from export.layout import (EXPORT_FORMAT_VERSION, EXPORT_INFO_FILE, MANIFEST_FILE, MANIFEST_FILES, TEXT_MAX_LENGTH,
                           TORCH_MODULE_DIRS, VAE_STAGE_INPUT, VAE_STAGE_OUTPUT, vae_stage_file)

if TYPE_CHECKING:
    from export.components import Components


def build_manifest(components: Components, stage_channels: Sequence[int],
                   stage_scales: Sequence[int]) -> dict[str, Any]:
    """The manifest; ``stage_channels`` / ``stage_scales`` are the verified output geometry of the VAE stages."""
    tokenizer = components.tokenizer
    return {
        "preset": components.name,
        "latent_channels": components.latent_channels,
        "vae_scale_factor": components.vae_scale_factor,
        "size_multiple": components.size_multiple,
        "default_size": components.default_size,
        "max_size": components.max_size,
        "text": {"max_length": TEXT_MAX_LENGTH, "hidden_size": components.text_hidden_size,
                 "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id},
        "scheduler": dict(components.scheduler_config),
        "files": dict(MANIFEST_FILES),
        "vae_stages": {"files": [vae_stage_file(k) for k in range(len(stage_channels))],
                       "input": VAE_STAGE_INPUT, "output": VAE_STAGE_OUTPUT,
                       "channels": list(stage_channels), "scales": list(stage_scales)},
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _named_files(manifest: dict[str, Any]) -> list[str] | None:
    """Every file the manifest names, or None if it lacks "files" or "vae_stages" (an older format)."""
    files, stages = manifest.get("files"), manifest.get("vae_stages")
    if not isinstance(files, dict) or not isinstance(stages, dict) or not isinstance(stages.get("files"), list):
        return None
    return [*files.values(), *stages["files"]]


def is_up_to_date(out_dir: Path, source: str, seed: int | None, tokenizer_kind: str) -> bool:
    """True if ``out_dir`` holds a complete export of ``source`` with ``seed`` (and the tokenizer kind, unless
    ``auto``) in the current format: then exporting again would produce the same files."""
    manifest = _read_json(out_dir / MANIFEST_FILE)
    info = _read_json(out_dir / EXPORT_INFO_FILE)
    if manifest is None or info is None:
        return False
    if info.get("format_version") != EXPORT_FORMAT_VERSION:
        return False
    if info.get("source") != source or info.get("seed") != seed:
        return False
    if tokenizer_kind != "auto" and info.get("tokenizer", {}).get("kind") != tokenizer_kind:
        return False
    files = _named_files(manifest)
    if files is None or not all((out_dir / name).is_file() for name in files):
        return False
    return all((out_dir / directory / "config.json").is_file() for directory in TORCH_MODULE_DIRS.values())
