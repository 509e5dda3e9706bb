"""Small networking helpers (ports, readiness polling) shared by the demo and the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """An ephemeral TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout_s`` (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def nodelay_env() -> dict[str, str]:
    """Environment for DCMTK tools and Orthanc: Debian's DCMTK leaves Nagle on unless TCP_NODELAY=1,
    and every C-STORE then stalls on a delayed ACK (~50 ms per instance)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 15) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL: how the demo and the tests stop their peers."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
