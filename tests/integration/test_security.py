"""SECURITY.md on the real server: the admin APIs (model repository, shared memory, trace, logging) are refused
without the admin key on HTTP and gRPC and allowed with it; inference stays open; models cannot be loaded even
with the key (model control mode `none`); an HTTP body above 64 MiB is not refused by Triton 2.51 itself, so the
model's own prompt bound is what refuses it."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.render import ServingSettings
from perf.server import ADMIN_KEY_HEADER, TritonServer
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration

GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"  # Triton prefixes the key's header name on gRPC
ADMIN_REQUESTS = (  # (method, path) of one HTTP endpoint per restricted API
    ("POST", "/v2/repository/index"), ("GET", "/v2/systemsharedmemory/status"),
    ("GET", "/v2/cudasharedmemory/status"), ("GET", "/v2/trace/setting"), ("GET", "/v2/logging"))


@pytest.fixture(scope="module")
def admin_key() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def keyed_server(tiny_models: Path, admin_key: str) -> Iterator[TritonServer]:
    """A server started the way an operator gives the key: SYNERDIFF_ADMIN_KEY in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNERDIFF_ADMIN_KEY", admin_key)
        running = start_server(tiny_models, "security", ServingSettings(policy="sequential"))
    yield running
    running.stop()


def http(server: TritonServer, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.ports.http_url}{path}", method=method, headers=headers or {},
                                     data=body if body is not None else (b"{}" if method == "POST" else None))
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_admin_apis_over_http_need_the_key_and_work_with_it(keyed_server: TritonServer, admin_key: str) -> None:
    for method, path in ADMIN_REQUESTS:
        status, body = http(keyed_server, method, path)
        assert (status, f"expecting header '{ADMIN_KEY_HEADER}'" in body) == (403, True), (path, status, body)
        assert http(keyed_server, method, path, {ADMIN_KEY_HEADER: admin_key + "x"})[0] == 403, path
        assert http(keyed_server, method, path, {ADMIN_KEY_HEADER: admin_key})[0] == 200, path
    status, body = http(keyed_server, "POST", "/v2/repository/index", {ADMIN_KEY_HEADER: admin_key})
    assert "diffusion" in {model["name"] for model in json.loads(body)}


def test_admin_apis_over_grpc_need_the_prefixed_key_header(keyed_server: TritonServer, admin_key: str) -> None:
    client = grpcclient.InferenceServerClient(keyed_server.ports.grpc_url)
    for headers in (None, {GRPC_HEADER: "wrong"}, {ADMIN_KEY_HEADER: admin_key}):  # the HTTP name does not count
        for call in (client.get_model_repository_index, client.get_system_shared_memory_status,
                     client.get_trace_settings, client.get_log_settings):
            with pytest.raises(InferenceServerException, match="restricted") as refused:
                call(headers=headers)
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
    index = client.get_model_repository_index(headers={GRPC_HEADER: admin_key})
    assert "diffusion" in {model.name for model in index.models}
    assert client.get_log_settings(headers={GRPC_HEADER: admin_key}) is not None


def test_inference_and_health_stay_open_without_the_key(keyed_server: TritonServer) -> None:
    assert http(keyed_server, "GET", "/v2/health/ready")[0] == 200
    status, body = http(keyed_server, "POST", "/v2/models/txt2img_unary/infer", {"Content-Type": "application/json"},
                        json.dumps({"inputs": [
                            {"name": "PROMPT", "shape": [1], "datatype": "BYTES", "data": ["a cat"]},
                            {"name": "STEPS", "shape": [1], "datatype": "INT32", "data": [2]}]}).encode())
    assert status == 200 and '"IMAGE"' in body


def test_models_cannot_be_loaded_or_unloaded_even_with_the_key(keyed_server: TritonServer, admin_key: str) -> None:
    for action in ("load", "unload"):
        status, body = http(keyed_server, "POST", f"/v2/repository/models/unet/{action}", {ADMIN_KEY_HEADER: admin_key})
        assert status != 200 and "not allowed" in body, (action, status, body)
    assert http(keyed_server, "GET", "/v2/models/unet/ready")[0] == 200


def test_an_http_body_over_64_mib_reaches_the_model_whose_prompt_bound_refuses_it(keyed_server: TritonServer) -> None:
    prompt = "a" * (65 * 2**20)
    body = json.dumps({"inputs": [{"name": "PROMPT", "shape": [1], "datatype": "BYTES", "data": [prompt]}]}).encode()
    status, reply = http(keyed_server, "POST", "/v2/models/txt2img_unary/infer",
                         {"Content-Type": "application/json"}, body)
    assert (status, json.loads(reply)) == (400, {"error": "PROMPT: must be at most 2000 characters"})
    assert http(keyed_server, "GET", "/v2/health/ready")[0] == 200


def test_the_default_server_has_a_key_nobody_was_told(server: TritonServer) -> None:
    """The session's server was started without SYNERDIFF_ADMIN_KEY: every admin API is refused, whatever the
    caller sends (the key is random), while inference metadata stays open."""
    for method, path in ADMIN_REQUESTS:
        assert http(server, method, path)[0] == 403, path
        assert http(server, method, path, {ADMIN_KEY_HEADER: ""})[0] == 403, path
    assert http(server, "GET", "/v2/models/diffusion/config")[0] == 200
