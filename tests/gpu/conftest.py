"""GPU tests: they need a CUDA device that torch can see, and are skipped everywhere else (CI, this repository's
development machines). Run them on a GPU host with `python -m pytest -q tests/gpu`.

The `tiny` preset is exported once per session (the same fixture as the unit tests')."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.exporter import export_models


@pytest.fixture(scope="session", autouse=True)
def needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture(scope="session")
def tiny_dir(needs_cuda: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_models("tiny", tmp_path_factory.mktemp("tiny"), seed=0, show_progress=False, log=lambda _: None)
