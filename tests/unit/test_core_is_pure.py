"""The core stays pure Python + numpy, and only the Triton edge touches the Python-backend stub's module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "scheduler_backend"
FORBIDDEN_IN_CORE = frozenset({"triton_python_backend_utils", "tritonclient", "c_python_backend_utils", "torch",
                               "diffusers", "onnxruntime"})
PB_UTILS = "triton_python_backend_utils"
NON_TEST_PACKAGES = ("model_repository", "export", "client", "perf", "scheduler_backend")
EDGE = "model_repository/triton_edge.py"


def imported_roots(source: str) -> set[str]:
    """Top-level names of every module the source imports: `import`, `from ... import`, anywhere (lazy
    imports in functions included), and `importlib.import_module("...")` / `__import__("...")`."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            callee = node.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if name in ("import_module", "__import__"):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def python_files(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (REPO / package).rglob("*.py")
                  if "__pycache__" not in path.parts)


@pytest.mark.parametrize("source, expected", [
    ("import torch.nn as nn", {"torch"}),
    ("from diffusers.schedulers import DDIMScheduler", {"diffusers"}),
    ("def f():\n    import triton_python_backend_utils as pb\n", {PB_UTILS}),
    ("import importlib\nimportlib.import_module('onnxruntime')", {"importlib", "onnxruntime"}),
    ("m = __import__('tritonclient.grpc')", {"tritonclient"}),
    ("from . import engine\nfrom .sampler import x", set()),
])
def test_the_import_scanner_sees_every_import_form(source: str, expected: set[str]) -> None:
    assert imported_roots(source) == expected


def test_the_core_is_scanned_whole() -> None:
    names = {path.name for path in python_files("scheduler_backend")}
    assert {"engine.py", "request.py", "sampler.py", "planner.py", "limits.py", "errors.py"} <= names


@pytest.mark.parametrize("path", python_files("scheduler_backend"), ids=lambda path: path.name)
def test_core_module_imports_no_triton_torch_diffusers_or_onnxruntime(path: Path) -> None:
    assert imported_roots(path.read_text()) & FORBIDDEN_IN_CORE == set()


def test_only_the_triton_edge_imports_the_python_backend_utils() -> None:
    importers = {path.relative_to(REPO).as_posix() for path in python_files(*NON_TEST_PACKAGES)
                 if PB_UTILS in imported_roots(path.read_text())}
    assert importers == {EDGE}
