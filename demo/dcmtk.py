"""DCMTK command-line peers (tests, benchmarks). Always the Debian binaries in /usr/bin: pynetdicom installs console
scripts with the same names (storescu, echoscu...) that would otherwise shadow them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from demo.netutil import free_port, nodelay_env, port_open, wait_until

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
        env=nodelay_env(),
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
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=nodelay_env())
    # storescu exits 0 even when single stores fail ("E: Store Failed"): count those as failure.
    if done.returncode == 0 and "E: " in done.stderr:
        done.returncode = 1
    return done


class StoreSCP:
    """DCMTK storescp writing what it receives bit-for-bit (+B), as the reference receiver."""

    def __init__(self, out_dir: Path, *, aet: str = "STORESCP", port: int | None = None) -> None:
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StoreSCP:
        self.process = subprocess.Popen(
            [STORESCP, "-aet", self.aet, "+B", "-od", str(self.out_dir), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=nodelay_env(),
        )
        wait_until(lambda: port_open(self.port), 10, "storescp to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
