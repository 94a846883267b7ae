"""TensorRT engines for the `gpu` target, built from the exported ONNX graphs with the `tensorrt` Python API.

`build_engine` does one engine: builder -> explicit-batch network -> ONNX parser -> the graph's tensors renamed to
their Triton names -> builder config (FP16 flag, the optimization profiles of export/engine_profiles.py, the
timing cache loaded from and saved back to one file, so later builds reuse measured tactics) -> serialized
engine written atomically as the plan. `build_engines` builds every engine of an export into
`<model dir>/tensorrt/` with `engines.json` (the serving bound they cover, the TensorRT version); the renderer
(export/render.py, target `gpu`) places each plan as `<repository>/<model>/1/model.plan`.

`tensorrt` is imported lazily, so this module imports anywhere; without it the build stops with
`TensorRTUnavailable` saying what to install. An engine only runs under the TensorRT version that built it (the
Triton 24.10 container has TensorRT 10.5): build inside that container (deploy/Dockerfile).

Not run on TensorRT in this repository's CI (no GPU, no TensorRT): the API sequence is exercised against a
stand-in module (tests/unit/test_tensorrt_build.py), and on a real GPU by tests/gpu/test_tensorrt.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

from export.engine_profiles import EngineSpec, Profile, check_against_graph, engine_specs
from export.errors import ExportError
from export.layout import MANIFEST_FILE

ENGINE_DIR = "tensorrt"
ENGINES_FILE = "engines.json"
TIMING_CACHE_FILE = "timing.cache"
CONTAINER_TENSORRT = "10.5"  # the TensorRT of nvcr.io/nvidia/tritonserver:24.10-py3 (Triton 2.51)


class TensorRTUnavailable(ExportError):
    """The `tensorrt` Python package cannot be imported."""


class EngineBuildError(ExportError):
    """TensorRT could not parse a graph or build its engine."""


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable(
            f"the `tensorrt` Python package is not importable ({error}); install the version of the Triton server "
            f"that will run the engines (`pip install tensorrt=={CONTAINER_TENSORRT}.*` for Triton 24.10, as "
            f"deploy/Dockerfile does), or serve with the torch fallback (`--target gpu-torch`)") from None
    return tensorrt


def network_flags(trt: ModuleType) -> int:
    """Explicit batch: the only mode of TensorRT >= 10 (flags 0); a flag before that."""
    if int(str(trt.__version__).split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _parse(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights (<graph>.onnx.data) beside the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    return parser  # the network refers to weights the parser owns: keep it alive until the build ends


def _rename(network: Any, tensor_names: Mapping[str, str]) -> None:
    tensors = ([network.get_input(i) for i in range(network.num_inputs)]
               + [network.get_output(i) for i in range(network.num_outputs)])
    for tensor in tensors:
        tensor.name = tensor_names.get(tensor.name, tensor.name)


def _add_profiles(builder: Any, config: Any, profiles: Sequence[Profile]) -> None:
    for index, profile in enumerate(profiles):
        optimization_profile = builder.create_optimization_profile()
        for name, shapes in profile.items():
            optimization_profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        if config.add_optimization_profile(optimization_profile) < 0:
            raise EngineBuildError(f"TensorRT rejected optimization profile {index}: {dict(profile)}")


def _write_atomic(path: Path, data: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(data)  # TensorRT's IHostMemory supports the buffer protocol: no copy into bytes
    os.replace(partial, path)


def build_engine(onnx_path: Path, profiles: Sequence[Profile], plan_path: Path, timing_cache_path: Path,
                 fp16: bool = True, tensor_names: Mapping[str, str] | None = None,
                 workspace_bytes: int | None = None, trt: ModuleType | None = None) -> Path:
    """Build one engine from `onnx_path` and write it to `plan_path`; return `plan_path`.

    `profiles` are keyed by the engine's input names, i.e. after `tensor_names` (ONNX name -> engine name) renamed
    them. The timing cache at `timing_cache_path` is read if present and written back after the build.
    """
    trt = trt or import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = _parse(trt, network, logger, onnx_path)
    _rename(network, tensor_names or {})
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    _add_profiles(builder, config, profiles)
    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)  # False: a mismatched cache is an error
    serialized = builder.build_serialized_network(network, config)
    del parser
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(plan_path, serialized)
    _write_atomic(timing_cache_path, config.get_timing_cache().serialize())
    return plan_path


def graph_inputs(onnx_path: Path) -> dict[str, list[int | str]]:
    """The ONNX graph's inputs and their declared dims (an int if static, the axis name if dynamic)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {tensor.name: [dim.dim_value if dim.HasField("dim_value") else dim.dim_param
                          for dim in tensor.type.tensor_type.shape.dim]
            for tensor in model.graph.input}


def engine_dir(model_dir: Path) -> Path:
    return Path(model_dir) / ENGINE_DIR


def read_engines(model_dir: Path) -> dict[str, Any] | None:
    """`engines.json` of an export, or None if no engines were built for it."""
    path = engine_dir(model_dir) / ENGINES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def build_engines(model_dir: Path, max_running_requests: int, vae_fp16: bool = True,
                  workspace_bytes: int | None = None, log: Callable[[str], None] = print,
                  trt: ModuleType | None = None, device_name: str = "") -> Path:
    """Every engine of the `gpu` target for the export in `model_dir`, for `max_running_requests`; returns the
    engine directory. The profiles are checked against the ONNX graphs before TensorRT is asked for anything.
    `device_name` (the GPU's name) is recorded: an engine runs only on the GPU model it was built for."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    specs = engine_specs(manifest, max_running_requests)
    for spec in specs:
        check_against_graph(spec, graph_inputs(model_dir / spec.onnx_file))
    trt = trt or import_tensorrt()
    out = engine_dir(model_dir)
    built: dict[str, Any] = {}
    for spec in specs:
        fp16 = spec.fp16 and (vae_fp16 or not spec.model.startswith("vae_"))
        log(f"tensorrt: building {spec.model} ({'fp16' if fp16 else 'fp32'}, {len(spec.profiles)} profiles)")
        build_engine(model_dir / spec.onnx_file, spec.profiles, out / spec.plan_file, out / TIMING_CACHE_FILE,
                     fp16=fp16, tensor_names=spec.tensor_names, workspace_bytes=workspace_bytes, trt=trt)
        built[spec.model] = {"plan": spec.plan_file, "profiles": len(spec.profiles), "fp16": fp16}
    info = {"max_running_requests": max_running_requests, "tensorrt_version": str(trt.__version__),
            "device": device_name, "engines": built}
    (out / ENGINES_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"tensorrt: wrote {len(built)} engines to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt_build",
                                     description="Build the TensorRT engines of the `gpu` target from an export.")
    parser.add_argument("--models", type=Path, required=True, help="exported model directory (manifest.json)")
    parser.add_argument("--max-running-requests", type=int, default=16,
                        help="the serving bound the engines must cover (UNet rows up to twice this)")
    parser.add_argument("--vae-fp32", action="store_true",
                        help="build the VAE engines in fp32 (VAEs that overflow in fp16, e.g. SDXL's)")
    parser.add_argument("--workspace-gib", type=float, help="TensorRT builder workspace limit")
    args = parser.parse_args(argv)
    workspace = int(args.workspace_gib * 2**30) if args.workspace_gib else None
    try:
        build_engines(args.models, args.max_running_requests, vae_fp16=not args.vae_fp32, workspace_bytes=workspace)
    except (ExportError, ValueError, FileNotFoundError) as error:
        print(f"tensorrt build failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
