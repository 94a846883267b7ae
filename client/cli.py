"""The `synerdiff` command: subcommands registered from a table and imported lazily.

Job: route `synerdiff <subcommand> ...` to the module that implements it.

Invariants:
- only the chosen subcommand's module is imported, so `synerdiff generate` works on a machine
  without torch or the export tooling, and `synerdiff --help` imports none of them;
- every subcommand module exposes add_arguments(parser) and run(args) -> int;
- a module that cannot be imported gives a one-line error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    module: str


SUBCOMMANDS = (
    Subcommand("generate", "generate images from text prompts on a running server",
               "client.generate_cli"),
    Subcommand("export", "export a diffusion pipeline to ONNX and a manifest", "export.cli"),
    Subcommand("render", "render images locally from an exported model", "export.render_cli"),
    Subcommand("profile", "measure the models' latency profile (UNet per batch, VAE chunks, contention)",
               "perf.profile_cli"),
    Subcommand("bench", "benchmark the server under load", "perf.bench_cli"),
    Subcommand("overhead", "what serving adds to each denoising step, as a fraction of the UNet call",
               "perf.overhead"),
    Subcommand("soak", "many mixed requests near capacity: every request answered, no memory or shm growth",
               "perf.soak"),
    Subcommand("simulate", "compare serving policies in the discrete-event simulator", "perf.simulate_cli"),
)


class SubcommandUnavailableError(Exception):
    """The module behind a subcommand cannot be imported or lacks add_arguments/run."""


def load_subcommand(subcommand: Subcommand) -> ModuleType:
    try:
        module = importlib.import_module(subcommand.module)
    except ImportError as exc:
        raise SubcommandUnavailableError(
            f"'{subcommand.name}' is not available: cannot import {subcommand.module} ({exc})"
        ) from None
    missing = [
        name for name in ("add_arguments", "run") if not callable(getattr(module, name, None))
    ]
    if missing:
        raise SubcommandUnavailableError(
            f"'{subcommand.name}' is not available: {subcommand.module} lacks {', '.join(missing)}"
        )
    return module


def _chosen(argv: list[str]) -> Subcommand | None:
    # The top-level parser has no options that take a value, so the first word that is not an
    # option names the subcommand.
    for word in argv:
        if not word.startswith("-"):
            return next((s for s in SUBCOMMANDS if s.name == word), None)
    return None


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The parser with every subcommand listed and only the chosen one's arguments added."""
    parser = argparse.ArgumentParser(
        prog="synerdiff", description="SynerDiff text-to-image serving on Triton Inference Server."
    )
    subparsers = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    chosen = _chosen(argv)
    module = None
    for subcommand in SUBCOMMANDS:
        subparser = subparsers.add_parser(
            subcommand.name, help=subcommand.help, description=subcommand.help
        )
        if subcommand is chosen:
            module = load_subcommand(subcommand)
            module.add_arguments(subparser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser, module = build_parser(argv)
        args = parser.parse_args(argv)
    except SubcommandUnavailableError as exc:
        print(f"synerdiff: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    assert module is not None  # parse_args succeeded, so a known subcommand was chosen
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("synerdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
