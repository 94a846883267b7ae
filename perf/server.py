"""Start and stop a real tritonserver (from the nvidia-pytriton wheel) on a rendered model repository.

Used by `scripts/serve.sh` (foreground), the integration tests and the benchmark (background). It owns
the process hygiene that Triton 2.51 needs on this kind of host (research/feasibility_triton.md):
- the venv's `bin` first on PATH, so the Python-backend stubs import the project's packages;
- LD_LIBRARY_PATH with the interpreter's LIBDIR, so the stub runs a consistent CPython;
- bound to 127.0.0.1, model control mode `none`, the admin APIs (model repository, shared memory, trace,
  logging) restricted to clients that send the `synerdiff-admin-key` header with the server's admin key (a
  random one unless `SYNERDIFF_ADMIN_KEY` is set, so by default nobody has them);
- stop: SIGTERM, wait past the exit timeout, then SIGKILL the server and the stubs it started, and
  remove the shared-memory regions named on those stubs' command lines (an open gRPC stream can keep
  a decoupled model's stub alive after the server has given up on it).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytriton

TRITON_HOME = Path(pytriton.__file__).parent / "tritonserver"


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}/metrics"


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 just now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_KEY_HEADER = "synerdiff-admin-key"


def admin_key() -> str:
    """The admin key for the restricted APIs: SYNERDIFF_ADMIN_KEY, else a random one nobody knows."""
    return os.environ.get("SYNERDIFF_ADMIN_KEY") or secrets.token_hex(16)


def server_command(repository: Path, ports: Ports, address: str = "127.0.0.1",
                   exit_timeout_s: int = 10, log_verbose: int = 0, key: str | None = None) -> list[str]:
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={key or admin_key()}"
    return [
        str(TRITON_HOME / "bin" / "tritonserver"),
        f"--model-repository={repository.resolve()}",
        f"--backend-directory={TRITON_HOME / 'backends'}",
        "--model-control-mode=none",
        f"--http-address={address}", f"--http-port={ports.http}",
        f"--grpc-address={address}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={address}", f"--metrics-port={ports.metrics}",
        "--allow-metrics=true", "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
        f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
    ]


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    return env


class TritonServer:
    """A tritonserver child process. Use as a context manager, or start() / stop()."""

    def __init__(self, repository: Path, ports: Ports, log_path: Path, exit_timeout_s: int = 10) -> None:
        self.repository, self.ports, self.log_path = repository, ports, log_path
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 180.0) -> TritonServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(server_command(self.repository, self.ports, exit_timeout_s=self.exit_timeout_s),
                                        stdout=log, stderr=subprocess.STDOUT, env=server_environment())
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; see {self.log_path}")
            if self.is_ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {ready_timeout_s} s; see {self.log_path}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.ports.http_url}/v2/health/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, wait, then kill what is left. Returns the server's exit code (None if killed)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        stubs = child_pids(process.pid)
        shm_regions = [region for pid in stubs for region in shm_regions_of(pid)]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code: int | None = process.wait(timeout=grace_s if grace_s is not None else self.exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        for pid in stubs:
            kill_quietly(pid)
        for region in shm_regions:
            Path("/dev/shm", region).unlink(missing_ok=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def child_pids(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(line) for line in out.split()]


def shm_regions_of(pid: int) -> list[str]:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
    return [arg.decode() for arg in args if arg.startswith(b"triton_python_backend_shm_region")]


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
