"""Shared unit-test fixtures: the `tiny` preset exported once per session (about 3 s) and its manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from export.exporter import export_models

SEED = 0


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_models("tiny", tmp_path_factory.mktemp("tiny"), seed=SEED, show_progress=False)


@pytest.fixture(scope="session")
def manifest(tiny_dir: Path) -> dict[str, Any]:
    return json.loads((tiny_dir / "manifest.json").read_text())
