"""Command line: ``python -m export --preset tiny --out build/models/tiny [--seed 0] [--checkpoint DIR] [--force]``.

``add_arguments`` / ``run`` let a top-level ``synerdiff export`` subcommand reuse this parser and entry point.
Exit status: 0 on success (including "already up to date"), 1 when the export or its verification fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.clip_vocab import TOKENIZER_KINDS
from export.presets import PRESETS
from export.errors import ExportError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="build this preset with seeded random weights")
    source.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="local diffusers checkpoint (unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    parser.add_argument("--out", type=Path, required=True, help="output directory, e.g. build/models/tiny")
    parser.add_argument("--seed", type=int, default=0, help="weight seed for presets (default 0)")
    parser.add_argument("--tokenizer", choices=("auto", *TOKENIZER_KINDS), default="auto",
                        help="presets only: auto = CLIP BPE from the open_clip_torch wheel if it can be fetched, "
                             "else the 514-id byte-level fallback (default auto)")
    parser.add_argument("--force", action="store_true", help="export even if --out is already up to date")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from export.exporter import export_models  # heavy imports (torch, diffusers) only when actually exporting

    source = args.preset if args.preset is not None else args.checkpoint
    try:
        export_models(source, args.out, seed=args.seed, force=args.force, tokenizer_kind=args.tokenizer,
                      show_progress=not args.no_progress)
    except (ExportError, ValueError, FileNotFoundError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a preset or a local diffusers checkpoint to ONNX graphs, tokenizer.json and "
                    "manifest.json (docs/interfaces.md).")
    add_arguments(parser)
    return run(parser.parse_args(argv))
