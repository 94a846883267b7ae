"""The process bookkeeping under TritonServer.stop(): a stub just sent SIGKILL may run on for a moment, so
stop() waits until it is gone before it removes its shared memory and returns."""

from __future__ import annotations

import subprocess

from perf.server import is_alive, wait_until_dead


def test_wait_until_dead_returns_once_the_process_has_exited() -> None:
    process = subprocess.Popen(["sleep", "0.3"])
    try:
        wait_until_dead([process.pid], timeout_s=10)
        assert not is_alive(process.pid)  # exited (a zombie until reaped counts as dead)
    finally:
        process.wait()


def test_wait_until_dead_gives_up_at_its_timeout() -> None:
    process = subprocess.Popen(["sleep", "30"])
    try:
        wait_until_dead([process.pid], timeout_s=0.2)
        assert is_alive(process.pid)
    finally:
        process.kill()
        process.wait()


def test_a_process_that_does_not_exist_is_not_alive() -> None:
    process = subprocess.Popen(["true"])
    process.wait()  # reaped: its pid is gone
    assert not is_alive(process.pid)
    wait_until_dead([process.pid], timeout_s=0.0)
