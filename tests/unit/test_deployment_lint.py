"""Deployment lint (SECURITY.md): the flags every tritonserver we start gets, the defaults of `serve.sh` /
`perf.serve`, and bounded inputs in the rendered model configs. No server is started."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from export.render import ServingSettings, render_repository
import perf.server
from perf import serve
from perf.server import ADMIN_KEY_HEADER, Ports, server_command

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
ADMIN_APIS = {"model-repository", "shared-memory"}  # at least these; trace and logging too (see below)

# Inputs that accept any size on a dimension (-1), model -> input -> why. These are the models the `diffusion`
# loop calls through BLS; Triton 2.51 lets any client call them too, and nothing bounds those dims but the
# message size (SECURITY.md, "Known gaps"). Every other input must be bounded; a new -1 fails this test.
UNBOUNDED_INPUTS = {
    "text_encoder": {"TOKEN_IDS": "rows: 1 or 2 prompts per request, more when the loop batches"},
    "unet": {"SAMPLE": "rows and latent height/width vary per step", "TIMESTEP": "one timestep per row",
             "ENCODER_HIDDEN_STATES": "one embedding per row"},
    "vae_decoder": {"LATENT": "images and latent height/width per decode"},
    "vae_stages": {"HIDDEN": "each stage has its own channels and scale"},
}


def flags(command: list[str]) -> dict[str, str]:
    """--name=value flags of a command line, by name (each flag appears once)."""
    pairs = [arg[2:].split("=", 1) for arg in command[1:] if arg.startswith("--")]
    assert all(len(pair) == 2 for pair in pairs), command
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a flag given twice: {names}"
    return dict(pairs)  # type: ignore[arg-type]


def restriction(value: str) -> tuple[set[str], str, str]:
    """--http-restricted-api / --grpc-restricted-protocol: "<api>,<api>:<header>=<value>"."""
    apis, _, header = value.partition(":")
    key, _, secret = header.partition("=")
    return set(apis.split(",")), key, secret


def command(monkeypatch: pytest.MonkeyPatch, key: str | None = None, **kwargs: Any) -> dict[str, str]:
    if key is None:
        monkeypatch.delenv("SYNERDIFF_ADMIN_KEY", raising=False)
    else:
        monkeypatch.setenv("SYNERDIFF_ADMIN_KEY", key)
    return flags(server_command(Path("repo"), Ports(18000, 18001, 18002), **kwargs))


def test_every_endpoint_is_bound_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = command(monkeypatch)
    assert (parsed["http-address"], parsed["grpc-address"], parsed["metrics-address"]) == (LOOPBACK,) * 3
    exposed = command(monkeypatch, address="0.0.0.0")
    assert {exposed[f"{kind}-address"] for kind in ("http", "grpc", "metrics")} == {"0.0.0.0"}


def test_models_cannot_be_loaded_and_metrics_reveal_no_host_details(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = command(monkeypatch)
    assert parsed["model-control-mode"] == "none"
    assert (parsed["allow-cpu-metrics"], parsed["allow-gpu-metrics"]) == ("false", "false")
    assert int(parsed["exit-timeout-secs"]) > 0
    assert "allow-client-shm" not in parsed or parsed["allow-client-shm"] == "false"


def test_admin_apis_need_the_admin_key_on_http_and_grpc_and_it_is_random_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = command(monkeypatch), command(monkeypatch)
    for parsed in (first, second):
        http, grpc = restriction(parsed["http-restricted-api"]), restriction(parsed["grpc-restricted-protocol"])
        assert http == grpc
        apis, header, secret = http
        assert apis >= ADMIN_APIS | {"trace", "logging"}
        assert "inference" not in apis and "health" not in apis  # clients still infer and probe
        assert header == ADMIN_KEY_HEADER
        assert re.fullmatch(r"[0-9a-f]{32}", secret), secret
    assert restriction(first["http-restricted-api"])[2] != restriction(second["http-restricted-api"])[2]


def test_the_admin_key_comes_from_the_environment_or_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = command(monkeypatch, key="operator-chosen-key")
    assert restriction(from_env["http-restricted-api"])[2] == "operator-chosen-key"
    assert restriction(from_env["grpc-restricted-protocol"])[2] == "operator-chosen-key"
    explicit = flags(server_command(Path("repo"), Ports(), key="passed-in"))
    assert restriction(explicit["http-restricted-api"])[2] == "passed-in"


class Launched(Exception):
    """Raised instead of starting tritonserver; carries the command line it would have run."""

    def __init__(self, command: list[str]) -> None:
        super().__init__(command)
        self.command = command


def launched_flags(monkeypatch: pytest.MonkeyPatch, module: Any, args: argparse.Namespace) -> dict[str, str]:
    """The flags `module.run(args)` would start tritonserver with: everything runs except the process itself."""
    def popen(command: list[str], *_: Any, **__: Any) -> None:
        raise Launched(list(command))

    monkeypatch.setattr(perf.server.subprocess, "Popen", popen)
    monkeypatch.setattr(module, "serve_in_foreground", lambda server: server.start())  # no signal handlers
    monkeypatch.delenv("SYNERDIFF_ADMIN_KEY", raising=False)
    with pytest.raises(Launched) as launched:
        module.run(args)
    return flags(launched.value.command)


def default_args(module: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([])


def assert_hardened(parsed: dict[str, str]) -> None:
    assert parsed["model-control-mode"] == "none"
    assert restriction(parsed["http-restricted-api"])[0] >= ADMIN_APIS
    assert restriction(parsed["grpc-restricted-protocol"])[0] >= ADMIN_APIS
    assert parsed["allow-cpu-metrics"] == "false" and int(parsed["exit-timeout-secs"]) > 0


def test_serve_starts_tritonserver_on_loopback_with_the_hardened_flags(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    args = default_args(serve)
    assert (args.address, args.http_port, args.grpc_port, args.metrics_port) == (LOOPBACK, 8000, 8001, 8002)
    assert (args.max_waiting_requests, args.max_running_requests) == (64, 16)
    monkeypatch.setattr(serve, "export_models", lambda *a, **k: tmp_path)
    monkeypatch.setattr(serve, "serving_profile", lambda *a, **k: tmp_path / "profile.json")
    monkeypatch.setattr(serve, "render_repository", lambda *a, **k: tmp_path / "repository")
    parsed = launched_flags(monkeypatch, serve, args)
    assert {parsed[f"{kind}-address"] for kind in ("http", "grpc", "metrics")} == {LOOPBACK}
    assert_hardened(parsed)
    assert parsed["allow-gpu-metrics"] == "false"


def test_serve_gpu_defaults_to_loopback_and_keeps_the_hardened_flags(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    from export.gpu_memory import MemoryPools
    from perf import serve_gpu

    args = default_args(serve_gpu)
    assert args.address == LOOPBACK  # the container's entrypoint passes --address 0.0.0.0 (SECURITY.md)
    monkeypatch.setattr(serve_gpu, "prepare", lambda _: (tmp_path / "repository", MemoryPools(2**30, 2**28)))
    parsed = launched_flags(monkeypatch, serve_gpu, args)
    assert {parsed[f"{kind}-address"] for kind in ("http", "grpc", "metrics")} == {LOOPBACK}
    assert_hardened(parsed)


def test_serve_sh_passes_no_bind_address_or_model_control_flag() -> None:
    script = (ROOT / "scripts" / "serve.sh").read_text()
    assert "python\" -m perf.serve" in script or "-m perf.serve" in script
    for risky in ("0.0.0.0", "--address", "model-control-mode", "restricted"):
        assert risky not in script, risky


def input_dims(config: str) -> dict[str, list[int]]:
    """Input name -> dims, from the `input [ ... ]` block of a config.pbtxt."""
    start = config.index("input [")
    depth, end = 0, start
    for end in range(start + len("input "), len(config)):
        depth += {"[": 1, "]": -1}.get(config[end], 0)
        if depth == 0:
            break
    block = config[start:end]
    entries = re.findall(r'name:\s*"([^"]+)"[^}]*?dims:\s*\[([^\]]*)\]', block)
    return {name: [int(d) for d in dims.replace(",", " ").split()] for name, dims in entries}


def test_every_rendered_input_is_bounded_except_the_documented_internal_ones(tiny_dir: Path, tmp_path: Path) -> None:
    repository = render_repository(tiny_dir, tmp_path / "repo", "cpu",
                                   ServingSettings(profile=str(tmp_path / "profile.json")))
    configs = {path.parent.name: path.read_text() for path in repository.glob("*/config.pbtxt")}
    assert {"diffusion", "txt2img", "txt2img_unary", "preprocess", "stop"} <= set(configs)
    unbounded: dict[str, set[str]] = {}
    for model, text in configs.items():
        dims = input_dims(text)
        assert dims, f"{model}: no inputs parsed"
        open_inputs = {name for name, shape in dims.items() if any(d < 0 for d in shape)}
        if open_inputs:
            unbounded[model] = open_inputs
        if model in ("diffusion", "txt2img", "txt2img_unary", "preprocess", "stop"):
            assert "max_batch_size: 0" in text, model  # no implicit batch dimension either
    assert unbounded == {model: set(inputs) for model, inputs in UNBOUNDED_INPUTS.items()}
