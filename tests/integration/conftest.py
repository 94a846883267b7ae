"""Integration fixtures: a real tritonserver (nvidia-pytriton's 2.51 build) serving the `tiny` export.

One server per test session, on free loopback ports, policy `continuous`. Its log is kept under
build/test-logs/ and its tail is printed when a test fails.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from export.exporter import export_models
from export.render import ServingSettings, render_repository
from perf.profile import ensure_profile
from perf.server import Ports, TritonServer, free_ports

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    return export_models("tiny", BUILD / "models" / "tiny", seed=0, show_progress=False, log=lambda _: None)


def start_server(models: Path, name: str, settings: ServingSettings, *,
                 before_start: Callable[[Path], None] | None = None, supervise: bool = False,
                 exit_timeout_s: int = 10) -> TritonServer:
    """Render `models` with `settings` (and the machine's latency profile of them) and start a server.
    `before_start` may change the rendered repository (the fault tests swap in their models). Names carry
    the test process's pid, so test sessions running side by side never render over each other's servers."""
    name = f"{name}-{os.getpid()}"
    profile = ensure_profile(models, unet_threads=settings.unet_threads, vae_threads=settings.vae_threads,
                             log=lambda _: None)
    repository = render_repository(models, BUILD / "test-repositories" / name,
                                   settings=replace(settings, profile=str(profile)))
    if before_start is not None:
        before_start(repository)
    log = BUILD / "test-logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    return TritonServer(repository, Ports(*free_ports(3)), log, exit_timeout_s=exit_timeout_s).start(supervise=supervise)


@pytest.fixture(scope="session")
def server(tiny_models: Path) -> Iterator[TritonServer]:
    running = start_server(tiny_models, "continuous", ServingSettings(policy="continuous", max_running_requests=16))
    yield running
    running.stop()


def wait_until_idle(server: TritonServer, within_s: float = 10.0) -> None:
    """Waiting, running and the VAE chunk backlog go back to 0: nothing of a finished request is held."""
    names = ("synerdiff_waiting_requests", "synerdiff_running_requests", "synerdiff_vae_chunk_backlog")
    deadline = time.monotonic() + within_s
    while True:
        held = {name: metric_value(server, name) for name in names}
        if not any(held.values()):
            return
        assert time.monotonic() < deadline, f"still held: {held}"
        time.sleep(0.1)


def metric_value(server: TritonServer, name: str, labels: str = "") -> float:
    """Sum of the samples of one metric on /metrics (optionally only those whose labels contain `labels`)."""
    with urllib.request.urlopen(server.ports.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
