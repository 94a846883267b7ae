"""The offline profiler on the `tiny` export: a complete, positive, JSON-stable profile; ensure_profile measures
once and then reuses the file until the manifest changes; the machine key is stable; `synerdiff profile` prints
the table and the path.

The `tiny` export is the one the integration tests serve (build/models/tiny, exported there if missing or out of
date), copied to a temporary directory so that the quick profiles written here never reach the server's. Each
measurement (rows 1 and 2, one repeat) takes about 2 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from client.cli import main as cli_main
from export.exporter import export_models
from perf.profile import PROFILES_DIR, ensure_profile, load_profile, machine_key, measure_profile, profile_path
from scheduler_backend.profile import LatencyProfile

BUILD = Path(__file__).resolve().parents[2] / "build"
QUICK = {"rows": (1, 2), "repeats": 1}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exported = export_models("tiny", BUILD / "models" / "tiny", seed=0, show_progress=False, log=lambda _: None)
    copy = tmp_path_factory.mktemp("profiled") / "tiny"
    shutil.copytree(exported, copy, ignore=shutil.ignore_patterns(PROFILES_DIR))
    return copy


@pytest.fixture(scope="module")
def manifest(tiny_dir: Path) -> dict[str, Any]:
    return json.loads((tiny_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def profile(tiny_dir: Path) -> LatencyProfile:
    return measure_profile(tiny_dir, log=lambda _: None, **QUICK)


def test_profile_round_trips_through_json(profile: LatencyProfile, tmp_path: Path) -> None:
    profile.save(tmp_path / "profile.json")
    assert load_profile(tmp_path / "profile.json") == profile


def test_unet_latency_is_positive_for_each_row_count(profile: LatencyProfile, manifest: dict[str, Any]) -> None:
    side = manifest["default_size"] // manifest["vae_scale_factor"]
    assert profile.latent_hw == (side, side)
    assert profile.unet_rows == (1, 2)
    assert all(seconds > 0 for seconds in profile.unet_seconds)


def test_every_chunk_kind_is_measured_with_its_contention(profile: LatencyProfile, manifest: dict[str, Any]) -> None:
    stages = [f"stage{k}" for k in range(len(manifest.get("vae_stages", {}).get("files", [])))]
    assert list(profile.vae_chunk_seconds) == ["whole", *stages, "tile"]
    assert all(seconds > 0 for seconds in profile.vae_chunk_seconds.values())
    assert set(profile.contention) == set(profile.vae_chunk_seconds)
    assert all(c.unet_slowdown >= 1.0 and c.vae_slowdown >= 1.0 for c in profile.contention.values())


def test_metadata_names_machine_model_and_method(profile: LatencyProfile, tiny_dir: Path) -> None:
    meta = profile.metadata
    assert meta["machine"]["unet_threads"] == meta["machine"]["vae_threads"] == 2
    assert meta["machine"]["cpu_count"] >= 1 and meta["machine"]["onnxruntime"]
    assert meta["model"]["preset"] == "tiny" and meta["model"]["dir"] == str(tiny_dir)
    assert len(meta["model"]["manifest_sha256"]) == 64
    assert meta["tiling"]["grid"] == [2, 2] and meta["tiling"]["overlap"] == 4
    assert meta["repeats"] == 1 and meta["profiling_seconds"] > 0 and meta["created"].endswith("+00:00")


def test_ensure_profile_measures_once_then_reuses(tiny_dir: Path) -> None:
    logged: list[str] = []
    path = ensure_profile(tiny_dir, log=logged.append, **QUICK)
    assert path == profile_path(tiny_dir) and path.parent == tiny_dir / "profiles"
    written_ns = path.stat().st_mtime_ns
    assert ensure_profile(tiny_dir, log=logged.append, **QUICK) == path
    assert path.stat().st_mtime_ns == written_ns
    assert logged[-1] == f"profile: reusing {path}"


def test_ensure_profile_measures_again_when_the_manifest_changed(tiny_dir: Path) -> None:
    path = ensure_profile(tiny_dir, log=lambda _: None, **QUICK)
    stale = load_profile(path)
    replace(stale, metadata={**stale.metadata, "model": {**stale.metadata["model"], "manifest_sha256": "old"}}
            ).save(path)
    assert ensure_profile(tiny_dir, log=lambda _: None, **QUICK) == path
    assert load_profile(path).metadata["model"] == stale.metadata["model"]


def test_machine_key_is_stable_and_depends_on_threads(tiny_dir: Path) -> None:
    key = machine_key(2, 2)
    assert len(key) == 12 and int(key, 16) >= 0
    assert machine_key(2, 2) == key and machine_key(1, 2) != key and machine_key(2, 1) != key
    assert profile_path(tiny_dir, 1, 2).name == f"{machine_key(1, 2)}.json"


def test_cli_prints_the_table_and_the_path(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "--model-dir", str(tiny_dir), "--rows", "1,2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("UNet rows"):]
    assert all(f"\n{kind:<9}" in table for kind in ("whole", "tile"))
    assert out.rstrip().endswith(f"profile: {profile_path(tiny_dir)}")


# -- the torch runtime (as `cpu-torch` runs the models; `torch:cuda` is the same code on a GPU) ----------------


def test_the_torch_runtime_measures_a_profile_of_its_own(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "--model-dir", str(tiny_dir), "--rows", "1,2", "--repeats", "1",
                     "--runtime", "torch:cpu"]) == 0
    path = profile_path(tiny_dir, runtime="torch:cpu")
    assert path != profile_path(tiny_dir) and machine_key(2, 2, "torch:cpu") != machine_key(2, 2)
    profile = load_profile(path)
    assert profile.metadata["machine"]["runtime"] == "torch:cpu"
    assert profile.metadata["machine"]["device"] == "cpu" and "onnxruntime" not in profile.metadata["machine"]
    assert all(seconds > 0 for seconds in (*profile.unet_seconds, *profile.vae_chunk_seconds.values()))
    assert set(profile.vae_chunk_seconds) == set(load_profile(ensure_profile(tiny_dir, log=lambda _: None, **QUICK))
                                                 .vae_chunk_seconds)
    assert "torch " in capsys.readouterr().out


def test_an_unknown_runtime_is_refused_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "--model-dir", "x", "--runtime", "tensorrt"]) == 2
    assert "runtime must be onnx, torch:cpu or torch:cuda[:N], got 'tensorrt'" in capsys.readouterr().err
