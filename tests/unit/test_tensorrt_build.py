"""The TensorRT build path (export/tensorrt_build.py) and the `gpu` repository it feeds, without TensorRT.

TensorRT cannot run here (no GPU), so the builder is driven against a stand-in module that records every call and
checks what TensorRT itself would refuse: profiles naming tensors the network does not have (e.g. profiles set
before the tensors were renamed), a network input without a shape in some profile, an unparsable graph. The stand-in
parses the real exported ONNX graphs (their inputs and outputs) with `onnx`. What it cannot show is that TensorRT
builds these graphs and that the engines compute the right thing: tests/gpu/test_tensorrt.py does, on a GPU.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest

from export.engine_profiles import ShapeRange, engine_specs
from export.render import RenderError, ServingSettings, render_repository
from export.tensorrt_build import (ENGINES_FILE, EngineBuildError, TensorRTUnavailable, build_engine, build_engines,
                                   import_tensorrt, network_flags)

SETTINGS = ServingSettings(policy="continuous", max_running_requests=4)


class FakeTensor:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        try:
            graph = onnx.load(path, load_external_data=False).graph
        except Exception as error:  # what TensorRT reports as a parse error
            self.errors = [f"cannot read {path}: {type(error).__name__}"]
            return False
        self.network.inputs = [FakeTensor(tensor.name) for tensor in graph.input]
        self.network.outputs = [FakeTensor(tensor.name) for tensor in graph.output]
        return True

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, index: int) -> str:
        return self.errors[index]


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
        self.shapes[name] = (low, opt, high)


class FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+tactics"


class FakeConfig:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.profiles: list[FakeProfile] = []
        self.pool_limits: dict[str, int] = {}
        self.cache: FakeCache | None = None

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeCache:
        return FakeCache(data)

    def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeCache:
        assert self.cache is not None
        return self.cache


class FakeBuilder:
    built: list[dict[str, Any]] = []

    def __init__(self, logger: Any) -> None:
        pass

    def create_network(self, flags: int) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
        names = {tensor.name for tensor in network.inputs}
        if not config.profiles or any(set(profile.shapes) != names for profile in config.profiles):
            return None  # TensorRT: every input needs min/opt/max in every profile, and only network inputs
        record = {"inputs": sorted(names), "outputs": [t.name for t in network.outputs], "flags": sorted(config.flags),
                  "profiles": [p.shapes for p in config.profiles], "network_flags": network.flags}
        self.built.append(record)
        return json.dumps(record).encode()


class FakeLogger:
    WARNING = "warning"

    def __init__(self, level: str) -> None:
        self.level = level


def fake_tensorrt(version: str = "10.5.0") -> Any:
    return SimpleNamespace(
        __version__=version, Logger=FakeLogger, Builder=FakeBuilder, OnnxParser=FakeParser,
        BuilderFlag=SimpleNamespace(FP16="FP16"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0))


@pytest.fixture()
def trt() -> Any:
    FakeBuilder.built = []
    return fake_tensorrt()


def test_missing_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(TensorRTUnavailable, match=r"tensorrt==10\.5\.\*.*gpu-torch"):
        import_tensorrt()


def test_network_is_explicit_batch_on_every_version() -> None:
    assert network_flags(fake_tensorrt("10.5.0")) == 0  # the only mode of TensorRT 10
    assert network_flags(fake_tensorrt("8.6.1")) == 1  # 1 << EXPLICIT_BATCH (0)


def test_build_engine_renames_sets_fp16_profiles_and_reuses_the_timing_cache(trt: Any, tiny_dir: Path,
                                                                             manifest: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    unet = next(spec for spec in engine_specs(manifest, 4) if spec.model == "unet")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"measured")
    plan = build_engine(tiny_dir / unet.onnx_file, unet.profiles, tmp_path / "unet.plan", cache,
                        tensor_names=unet.tensor_names, workspace_bytes=2**30, trt=trt)
    record = json.loads(plan.read_bytes())
    assert record["inputs"] == ["ENCODER_HIDDEN_STATES", "SAMPLE", "TIMESTEP"] and record["outputs"] == ["NOISE_PRED"]
    assert record["flags"] == ["FP16"] and record["network_flags"] == 0
    assert len(record["profiles"]) == len(unet.profiles) == 3  # rows 1-2, 3-4, 5-8 (2 x 4 running requests)
    assert record["profiles"][2]["SAMPLE"] == [[5, 4, 4, 4], [8, 4, 32, 32], [8, 4, 128, 128]]
    assert cache.read_bytes() == b"measured+tactics"  # loaded, extended by the build, saved back
    assert not list(tmp_path.glob("*.partial"))


def test_build_engine_without_fp16_and_with_a_fresh_cache(trt: Any, tiny_dir: Path, tmp_path: Path) -> None:
    profile = {"LATENT": ShapeRange((1, 4, 1, 1), (1, 4, 32, 32), (2, 4, 64, 64))}
    build_engine(tiny_dir / "vae_decoder.onnx", [profile], tmp_path / "vae.plan", tmp_path / "timing.cache",
                 fp16=False, tensor_names={"latent": "LATENT", "image": "IMAGE"}, trt=trt)
    assert FakeBuilder.built[-1]["flags"] == []
    assert (tmp_path / "timing.cache").read_bytes() == b"+tactics"


def test_build_errors_name_the_graph(trt: Any, tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(EngineBuildError, match="cannot parse broken.onnx"):
        build_engine(broken, [], tmp_path / "x.plan", tmp_path / "timing.cache", trt=trt)
    profile = {"latent": ShapeRange((1, 4, 1, 1), (1, 4, 8, 8), (1, 4, 8, 8))}  # the name before renaming
    with pytest.raises(EngineBuildError, match="could not build an engine from vae_decoder.onnx"):
        build_engine(tiny_dir / "vae_decoder.onnx", [profile], tmp_path / "x.plan", tmp_path / "timing.cache",
                     tensor_names={"latent": "LATENT"}, trt=trt)
    assert not (tmp_path / "x.plan").exists()


def test_build_engines_then_render_the_gpu_repository(trt: Any, tiny_dir: Path, manifest: dict[str, Any],
                                                      tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="export.tensorrt_build"):
        render_repository(tiny_dir, tmp_path / "repo", "gpu", SETTINGS)  # no engines yet
    engines = build_engines(tiny_dir, max_running_requests=4, vae_fp16=False, log=lambda _: None, trt=trt)
    try:
        info = json.loads((engines / ENGINES_FILE).read_text())
        stage_models = [f"vae_stage_{k}" for k in range(len(manifest["vae_stages"]["files"]))]
        assert sorted(info["engines"]) == sorted(["text_encoder", "unet", "vae_decoder", *stage_models])
        assert info["max_running_requests"] == 4 and info["tensorrt_version"] == "10.5.0"
        assert info["engines"]["unet"]["fp16"] and not info["engines"]["vae_decoder"]["fp16"]
        repository = render_repository(tiny_dir, tmp_path / "repo", "gpu", SETTINGS)
        for model in ("unet", "vae_decoder", "text_encoder", *stage_models):
            config = (repository / model / "config.pbtxt").read_text()
            assert 'platform: "tensorrt_plan"' in config and "kind: KIND_GPU" in config
            assert (repository / model / "1" / "model.plan").read_bytes() == (engines / f"{model}.plan").read_bytes()
            assert not (repository / model / "1" / "model.py").exists()
        assert 'profile: [ "0", "1", "2" ]' in (repository / "unet" / "config.pbtxt").read_text()
        stage1 = (repository / "vae_stage_1" / "config.pbtxt").read_text()
        assert 'name: "vae_stage_1"' in stage1
        assert f"dims: [ -1, {manifest['vae_stages']['channels'][0]}, -1, -1 ]" in stage1
        router = (repository / "vae_stages" / "config.pbtxt").read_text()
        assert 'backend: "python"' in router and f'"{len(stage_models)}"' in router
        assert "stage_router" in (repository / "vae_stages" / "1" / "model.py").read_text()
        with pytest.raises(RenderError, match="cover max_running_requests <= 4"):
            render_repository(tiny_dir, tmp_path / "repo", "gpu",
                              ServingSettings(policy="continuous", max_running_requests=8))
    finally:  # the session's export is shared with other tests
        for path in engines.iterdir():
            path.unlink()
        engines.rmdir()
