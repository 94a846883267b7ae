"""Start and stop a real tritonserver (from the nvidia-pytriton wheel) on a rendered model repository.

Used by `scripts/serve.sh` (foreground), the integration tests and the benchmark (background). It owns
the process hygiene that Triton 2.51 needs on this kind of host (research/feasibility_triton.md):
- the venv's `bin` first on PATH, so the Python-backend stubs import the project's packages;
- LD_LIBRARY_PATH with the interpreter's LIBDIR, so the stub runs a consistent CPython;
- bound to 127.0.0.1, model control mode `none`, the admin APIs (model repository, shared memory, trace,
  logging) restricted to clients that send the `synerdiff-admin-key` header with the server's admin key (a
  random one unless `SYNERDIFF_ADMIN_KEY` is set, so by default nobody has them);
- stop: SIGTERM, wait past the exit timeout, then SIGKILL the server and the stubs it started, wait until
  they are gone, and remove the shared-memory regions named on those stubs' command lines (an open gRPC stream
  can keep a decoupled model's stub alive after the server has given up on it).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence



def pytriton_home() -> Path:
    """The tritonserver inside the nvidia-pytriton wheel (imported only when used: the NGC container has its own)."""
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


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
                   exit_timeout_s: int = 10, log_verbose: int = 0, key: str | None = None, *,
                   tritonserver: str | None = None, gpu_metrics: bool = False,
                   extra_flags: Sequence[str] = ()) -> list[str]:
    """The tritonserver command line. `tritonserver` None runs the nvidia-pytriton wheel's server with its
    backends; a path (the NGC container's) runs that one with its own backends. `extra_flags` follow the rest
    (the GPU memory pools)."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={key or admin_key()}"
    if tritonserver is None:
        home = pytriton_home()
        binary = [str(home / "bin" / "tritonserver"), f"--backend-directory={home / 'backends'}"]
    else:
        binary = [tritonserver]
    return [
        binary[0],
        f"--model-repository={repository.resolve()}",
        *binary[1:],
        "--model-control-mode=none",
        f"--http-address={address}", f"--http-port={ports.http}",
        f"--grpc-address={address}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={address}", f"--metrics-port={ports.metrics}",
        "--allow-metrics=true", "--allow-cpu-metrics=false", f"--allow-gpu-metrics={str(gpu_metrics).lower()}",
        f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
        *extra_flags,
    ]


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    return env


@dataclass(frozen=True)
class Stub:
    """A Python-backend stub process of the server: its pid, model instance and shared-memory region."""

    pid: int
    instance: str  # e.g. "unet_0_0"
    shm_region: str | None


class TritonServer:
    """A tritonserver child process. Use as a context manager, or start() / stop().

    `start(supervise=True)` also starts a watchdog: Triton 2.51's Python backend does not restart a stub
    that died (kill -9, OOM killer); its model keeps failing with "Stub process ... is not healthy" while
    the server still reports ready. The watchdog notices a dead stub (or server) within `poll_s`, stops
    the server (every live request gets its final response from `diffusion`'s finalize), removes the
    shared memory left behind and starts the server again on the same ports; `restarts` counts the restarts
    that succeeded.
    `log_path` None sends the server's log to this process's stdout.
    """

    def __init__(self, repository: Path, ports: Ports, log_path: Path | None, exit_timeout_s: int = 10,
                 admin_key: str | None = None, address: str = "127.0.0.1", *, tritonserver: str | None = None,
                 gpu_metrics: bool = False, extra_flags: Sequence[str] = ()) -> None:
        self.repository, self.ports, self.log_path, self.address = repository, ports, log_path, address
        self.tritonserver, self.gpu_metrics, self.extra_flags = tritonserver, gpu_metrics, tuple(extra_flags)
        self.exit_timeout_s = exit_timeout_s
        self.admin_key = admin_key
        self.process: subprocess.Popen[bytes] | None = None
        self.stubs: list[Stub] = []
        self.restarts = 0
        self.gave_up = threading.Event()  # set when the watchdog could not restart the server
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self, ready_timeout_s: float = 180.0, supervise: bool = False, poll_s: float = 0.5) -> TritonServer:
        with self._lock:
            self._launch(ready_timeout_s)
        if supervise and self._watchdog is None:
            self._stopping.clear()
            self._watchdog = threading.Thread(target=self._watch, args=(poll_s, ready_timeout_s),
                                              name="tritonserver-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def _launch(self, ready_timeout_s: float) -> None:
        command = server_command(self.repository, self.ports, self.address, exit_timeout_s=self.exit_timeout_s,
                                 key=self.admin_key, tritonserver=self.tritonserver, gpu_metrics=self.gpu_metrics,
                                 extra_flags=self.extra_flags)
        if self.log_path is None:
            self.process = subprocess.Popen(command, env=server_environment())
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                env=server_environment())
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._stop_process()
                raise RuntimeError(f"tritonserver exited with {code}; see {self.log_path or 'its output'}")
            if self.is_ready():
                self.stubs = stubs_of(self.process.pid)
                return
            time.sleep(0.25)
        self._stop_process()
        raise TimeoutError(f"tritonserver not ready after {ready_timeout_s} s; see {self.log_path or 'its output'}")

    def is_ready(self) -> bool:
        try:
            host = "127.0.0.1" if self.address in ("0.0.0.0", "::") else self.address
            with urllib.request.urlopen(f"http://{host}:{self.ports.http}/v2/health/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def dead_stubs(self) -> list[Stub]:
        return [stub for stub in self.stubs if not is_alive(stub.pid)]

    def _watch(self, poll_s: float, ready_timeout_s: float) -> None:
        while not self._stopping.wait(poll_s):
            with self._lock:
                if self._stopping.is_set() or self.process is None:
                    return
                dead = self.dead_stubs()
                if not dead and self.process.poll() is None:
                    continue
                what = ", ".join(stub.instance for stub in dead) or "the server"
                print(f"watchdog: {what} died; restarting tritonserver", file=sys.stderr, flush=True)
                self._stop_process()
                try:
                    self._launch(ready_timeout_s)
                except (RuntimeError, TimeoutError) as error:
                    print(f"watchdog: restart failed: {error}", file=sys.stderr, flush=True)
                    self.gave_up.set()
                    return
                self.restarts += 1  # counted once the new server is ready and its stubs are known

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, wait, then kill what is left. Returns the server's exit code (None if killed)."""
        self._stopping.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
            self._watchdog = None
        with self._lock:
            return self._stop_process(grace_s)

    def _stop_process(self, grace_s: float | None = None) -> int | None:
        """Stop the server and every stub it started; remove the stubs' shared memory.

        The server exits by itself once every model has unloaded. A model whose stub died never unloads,
        and a decoupled model with an open client stream does not either (2.51): the server then waits out
        its exit timeout, and with an open stream keeps running after it. So once every stub that was alive
        has gone, the server gets a moment to exit and is then killed; past the grace it is killed anyway.
        """
        if self.process is None:
            return None
        process, self.process = self.process, None
        stubs = {stub.pid: stub for stub in [*self.stubs, *stubs_of(process.pid)]}.values()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (grace_s if grace_s is not None else self.exit_timeout_s + 3)
        unloaded_at: float | None = None
        code: int | None = None
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                break
            if unloaded_at is None and not any(is_alive(stub.pid) for stub in stubs):
                unloaded_at = time.monotonic()
            if unloaded_at is not None and time.monotonic() - unloaded_at > 1.0:
                break
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
            code = None
        for stub in stubs:
            kill_quietly(stub.pid)
        wait_until_dead([stub.pid for stub in stubs])
        for stub in stubs:
            if stub.shm_region:
                Path("/dev/shm", stub.shm_region).unlink(missing_ok=True)
        self.stubs = []
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_foreground(server: TritonServer) -> int:
    """Run `server` under its watchdog until SIGTERM or SIGINT, then stop it cleanly; 0 if it exited cleanly,
    1 otherwise or when the watchdog could not restart it (so that a container runtime restarts the process)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start(supervise=True)
    print(f"ready: HTTP {server.address}:{server.ports.http}, gRPC {server.address}:{server.ports.grpc}, "
          f"metrics {server.address}:{server.ports.metrics}", flush=True)
    while not stop.wait(1.0) and not server.gave_up.is_set():
        pass
    code = server.stop()
    print(f"stopped (tritonserver exit code {code})", flush=True)
    return 0 if code == 0 and not server.gave_up.is_set() else 1


def metric_value(metrics_url: str, name: str, labels: str = "") -> float | None:
    """Sum of one metric's samples on /metrics (only those whose labels contain `labels`); None when the endpoint
    does not answer or has no such sample."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{") and labels in line]
    return sum(values) if values else None


def child_pids(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(line) for line in out.split()]


def stubs_of(server_pid: int) -> list[Stub]:
    """The Python-backend stubs among the server's children (their command line names the instance and
    the shared-memory region)."""
    stubs = []
    for pid in child_pids(server_pid):
        args = command_line(pid)
        if not args or not args[0].endswith("triton_python_backend_stub"):
            continue
        regions = shm_regions_of(pid, args)
        instance = args[-2] if len(args) >= 3 else "?"  # ... <instance name> <execution env>
        stubs.append(Stub(pid, instance, regions[0] if regions else None))
    return stubs


def command_line(pid: int) -> list[str]:
    """A process's arguments ([] once it is gone)."""
    try:
        return [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return []


def shm_regions_of(pid: int, args: list[str] | None = None) -> list[str]:
    """The Python-backend shared-memory regions named on a process's command line (`args` if already read)."""
    return [arg for arg in (command_line(pid) if args is None else args)
            if arg.startswith("triton_python_backend_shm_region")]


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a stub that died stays a zombie until the server reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until_dead(pids: Sequence[int], timeout_s: float = 10.0) -> None:
    """Return once none of `pids` is alive: SIGKILL is delivered asynchronously, so a process just killed
    may still be running for a moment (longer on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
