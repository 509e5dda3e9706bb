"""DCMTK command-line peers. Always the Debian binaries in /usr/bin: pynetdicom installs console
scripts with the same names (storescu, echoscu...) that would otherwise shadow them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.peers.net import dcmtk_env

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
STORESCP = "/usr/bin/storescp"


def echoscu(
    port: int, *, called: str, calling: str = "ECHOSCU", timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=dcmtk_env(),
    )


def storescu(
    port: int,
    files_or_dirs: list[Path],
    *,
    called: str,
    calling: str = "STORESCU",
    extra_args: list[str] | None = None,
    timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send files (or directories, scanned recursively) with C-STORE; returns the finished process."""
    args = [STORESCU, "-aet", calling, "-aec", called, "+sd", "+r", "-nh"]  # -nh: also send non-Part-10 files
    args += extra_args or []
    args += ["127.0.0.1", str(port)] + [str(p) for p in files_or_dirs]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=dcmtk_env())
