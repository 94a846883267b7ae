"""manifest.json (the contract of docs/interfaces.md) and export_info.json (provenance, for humans and for the
"already exported?" check).

Invariants: manifest.json holds exactly the documented keys and is written last, atomically, so its presence
means every file it names is complete; a failed or interrupted export leaves no manifest. Provenance (seed,
source, tokenizer kind, versions, timings, ORT-vs-torch differences) lives in export_info.json, not in the
manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.layout import EXPORT_INFO_FILE, MANIFEST_FILE, MANIFEST_FILES, TEXT_MAX_LENGTH

if TYPE_CHECKING:
    from export.components import Components


def build_manifest(components: Components) -> dict[str, Any]:
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


def is_up_to_date(out_dir: Path, source: str, seed: int | None, tokenizer_kind: str) -> bool:
    """True if ``out_dir`` holds a complete export of ``source`` with ``seed`` (and the tokenizer kind, unless
    ``auto``): then exporting again would produce the same files."""
    manifest = _read_json(out_dir / MANIFEST_FILE)
    info = _read_json(out_dir / EXPORT_INFO_FILE)
    if manifest is None or info is None:
        return False
    if info.get("source") != source or info.get("seed") != seed:
        return False
    if tokenizer_kind != "auto" and info.get("tokenizer", {}).get("kind") != tokenizer_kind:
        return False
    files = manifest.get("files", {})
    return isinstance(files, dict) and all((out_dir / name).is_file() for name in files.values())
