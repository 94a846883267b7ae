"""export_models: build (or load) the models, export the three ONNX graphs, the VAE stage graphs and the
tokenizer, verify them (the graphs against torch, the chained stages against the full VAE decoder), save the torch
modules themselves (for the torch serving fallback), and write the manifest.

Stages, shown as one tqdm bar on stderr: build, text encoder, unet, vae decoder, vae stages, verify, torch modules,
manifest.
Results (tokenizer used, ORT-vs-torch and stages-vs-decoder differences, timings) are printed to stdout.
Invariant: the manifest is written last, only after every graph passed verification; an up-to-date directory is
left untouched unless forced.
"""

from __future__ import annotations

import importlib.metadata
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from tqdm import tqdm

from export.layout import (EXPORT_FORMAT_VERSION, EXPORT_INFO_FILE, MANIFEST_FILE, TOKENIZER_FILE,
                           TORCH_MODULE_DIRS)
from export.manifest import build_manifest, is_up_to_date, write_json_atomic
from export.presets import PRESETS

if TYPE_CHECKING:
    from export.components import Components

STAGES = ("build", "text encoder", "unet", "vae decoder", "vae stages", "verify", "torch modules", "manifest")
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "onnx", "onnxruntime")


def _source_of(preset_or_checkpoint: str | Path) -> tuple[str, Path | None]:
    """("preset:<name>", None) for a preset name, ("checkpoint:<abs dir>", dir) for a checkpoint directory."""
    if isinstance(preset_or_checkpoint, str) and preset_or_checkpoint in PRESETS:
        return f"preset:{preset_or_checkpoint}", None
    checkpoint = Path(preset_or_checkpoint).resolve()
    if not checkpoint.is_dir():
        raise ValueError(f"{preset_or_checkpoint!r} is neither a preset ({', '.join(PRESETS)}) "
                         f"nor a checkpoint directory")
    return f"checkpoint:{checkpoint}", checkpoint


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERSIONED_PACKAGES}


def _file_sizes(out_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(out_dir)): p.stat().st_size for p in sorted(out_dir.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST_FILE, EXPORT_INFO_FILE)}


def export_models(preset_or_checkpoint: str | Path, out_dir: str | Path, seed: int = 0, force: bool = False,
                  tokenizer_kind: str = "auto", show_progress: bool = True,
                  log: Callable[[str], None] = tqdm.write) -> Path:
    """Export a preset (by name) or a local diffusers checkpoint (a directory) into ``out_dir``; return it.

    A no-op when ``out_dir`` already holds the same export (same source and seed), unless ``force``.
    ``tokenizer_kind`` ("auto", "clip-bpe", "byte-level") applies to presets; checkpoints bring their own.
    """
    source, checkpoint = _source_of(preset_or_checkpoint)
    out = Path(out_dir).resolve()
    if not force and is_up_to_date(out, source, _seed_key(checkpoint, seed), tokenizer_kind):
        log(f"export: {out} is up to date ({source}, seed {_seed_key(checkpoint, seed)}); use --force to redo it")
        return out
    return _export_fresh(source, checkpoint, seed, out, tokenizer_kind, show_progress, log)


def _save_torch_modules(components: Components, out: Path) -> None:
    """The modules in their libraries' own layout (what the torch serving fallback loads), without the progress
    bar transformers draws while writing."""
    from transformers.utils import logging as transformers_logging

    modules = {"unet": components.unet, "vae": components.vae, "text_encoder": components.text_encoder}
    bar_was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        for name, directory in TORCH_MODULE_DIRS.items():
            modules[name].save_pretrained(str(out / directory))
    finally:
        if bar_was_enabled:
            transformers_logging.enable_progress_bar()


def _seed_key(checkpoint: Path | None, seed: int) -> int | None:
    """The seed that identifies an export: checkpoints have fixed weights, so none."""
    return None if checkpoint is not None else seed


def _export_fresh(source: str, checkpoint: Path | None, seed: int, out: Path, tokenizer_kind: str,
                  show_progress: bool, log: Callable[[str], None]) -> Path:
    # torch/diffusers/onnx load here, not at module import, so an up-to-date check stays instant.
    from export.components import build_components, load_checkpoint
    from export.onnx_export import (OPSET_VERSION, export_text_encoder, export_unet, export_vae_decoder,
                                    export_vae_stages)
    from export.verify import RELATIVE_TOLERANCE, verify_exports, verify_vae_stages

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # until verified, the directory is not a usable export
    timings_s: dict[str, float] = {}
    label = source.split(":", 1)[1] if checkpoint is None else out.name
    with tqdm(total=len(STAGES), desc=f"export {label}", unit="stage", disable=not show_progress) as bar:

        @contextmanager
        def stage(name: str) -> Iterator[None]:
            bar.set_postfix_str(name)
            started_s = time.perf_counter()
            yield
            timings_s[name] = round(time.perf_counter() - started_s, 3)
            bar.update(1)

        with stage("build"):
            components = (load_checkpoint(checkpoint) if checkpoint is not None
                          else build_components(label, seed, tokenizer_kind))
            tokenizer = components.tokenizer
            (out / TOKENIZER_FILE).parent.mkdir(parents=True, exist_ok=True)
            tokenizer.tokenizer.save(str(out / TOKENIZER_FILE))
            log(f"export: tokenizer {tokenizer.kind} ({tokenizer.vocab_size} ids) from {tokenizer.origin}")
        with stage("text encoder"):
            paths = {"text_encoder": export_text_encoder(components, out)}
        with stage("unet"):
            paths["unet"] = export_unet(components, out)
        with stage("vae decoder"):
            paths["vae_decoder"] = export_vae_decoder(components, out)
        with stage("vae stages"):
            stage_paths = export_vae_stages(components, out)
        with stage("verify"):
            checks = verify_exports(components, paths, seed)
            stages_check = verify_vae_stages(components, paths["vae_decoder"], stage_paths, seed)
            for check in (*checks, stages_check):
                log(f"export: {check.describe()}")
        with stage("torch modules"):
            _save_torch_modules(components, out)
        with stage("manifest"):
            info = {"format_version": EXPORT_FORMAT_VERSION, "source": source, "seed": _seed_key(checkpoint, seed),
                    "opset_version": OPSET_VERSION,
                    "tokenizer": {"kind": tokenizer.kind, "origin": tokenizer.origin,
                                  "vocab_size": tokenizer.vocab_size},
                    "relative_tolerance": RELATIVE_TOLERANCE,
                    "ort_vs_torch": {check.graph: check.record() for check in checks},
                    "vae_stages_vs_decoder": stages_check.record(),
                    "timings_s": timings_s, "file_sizes_bytes": _file_sizes(out), "versions": _versions()}
            write_json_atomic(out / EXPORT_INFO_FILE, info)
            write_json_atomic(out / MANIFEST_FILE,
                              build_manifest(components, stages_check.channels, stages_check.scales))
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in _file_sizes(out).items())
    log(f"export: wrote {out} in {sum(timings_s.values()):.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in timings_s.items())}); {sizes}")
    return out
