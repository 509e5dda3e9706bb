"""The node as a real process (``python -m node serve``), for tests and benchmarks that talk to it over
DICOM, kill it, and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from demo.netutil import free_port, port_open, wait_until
from node.index import queries
from node.index.db import Database

REPO_ROOT = Path(__file__).resolve().parents[1]


def _terminate_with_parent() -> None:
    """Linux: SIGTERM the node if the test process dies (a killed pytest must not leave nodes behind)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class NodeProcess:
    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None = None,
        *,
        ae_title: str = "AINODE",
        http: dict[str, Any] | None = None,
        source_root: Path = REPO_ROOT,
    ) -> None:
        """``source_root``: the checkout whose ``node`` package runs (a benchmark's baseline: an older tree
        from ``git archive``); this one by default."""
        self.workdir = workdir
        self.source_root = source_root
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "node-data"
        self.port = free_port()
        self.ae_title = ae_title
        base: dict[str, Any] = {
            "dicom": {
                "ae_title": ae_title,
                "port": self.port,
                "bind_address": "127.0.0.1",
                "allowed_callers": [{"ae_title": "STORESCU"}, {"ae_title": "ORTHANC"}, {"ae_title": "TESTSCU"}],
            },
            "storage": {"data_dir": str(self.data_dir), "min_free_disk_mb": 0},
            "completeness": {"quiet_period_s": 30, "settle_s": 1, "check_interval_s": 0.25},
            "workers": {"processes": 1},
            "logging": {"level": "DEBUG"},
            # The quick non-AI pipeline: these tests are about receiving, not about the model.
            "routes": [
                {"name": "all-ct", "when": {"tag": "Modality", "equals": "CT"}, "pipelines": ["series-summary"]}
            ],
        }
        # The HTTP API on an ephemeral loopback port when ``http`` (the rest of the section) is given.
        self.http_port: int | None = None
        if http is not None:
            self.http_port = free_port()
            base["http"] = {"enabled": True, "bind_address": "127.0.0.1", "port": self.http_port, **http}
        for section, values in (config or {}).items():
            if isinstance(values, dict):
                base.setdefault(section, {}).update(values)
            else:
                base[section] = values
        self.config = base
        self.config_path = workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(base))
        self.log_path = workdir / "node.log"
        self.process: subprocess.Popen[bytes] | None = None

    def reconfigure(self, changes: dict[str, dict[str, Any]]) -> None:
        """Change settings for the next start (same port, same data dir)."""
        for section, values in changes.items():
            self.config.setdefault(section, {}).update(values)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, timeout_s: float = 30) -> NodeProcess:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(self.source_root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.source_root,
            env=env,
            start_new_session=True,
        )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node exited early:\n{self.log_text()[-3000:]}")
            # HTTP first: it starts after the SCP, and every probe of the DICOM port is an association
            # attempt that holds one of the SCP's association slots until its ACSE timeout.
            return (self.http_port is None or port_open(self.http_port)) and port_open(self.port)

        wait_until(ready, timeout_s, "the node to listen")
        return self

    @property
    def http_url(self) -> str:
        assert self.http_port is not None, "started without http="
        scheme = "https" if self.config.get("http", {}).get("tls") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def kill(self) -> None:
        """SIGKILL the whole process group (node and its workers), as a crash would."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def __enter__(self) -> NodeProcess:
        # `with node.start():` and `with node:` both work; a running node is not started twice.
        return self if self.process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def db(self) -> Database:
        return Database(self.data_dir / "index.sqlite")

    def series_row(self, series_uid: str) -> dict[str, Any] | None:
        return queries.series_row(self.db(), series_uid)

    def wait_series_state(self, series_uid: str, state: str, timeout_s: float) -> dict[str, Any]:
        def reached() -> bool:
            row = self.series_row(series_uid)
            return row is not None and row["state"] == state

        wait_until(reached, timeout_s, f"series to be {state}", interval_s=0.1)
        row = self.series_row(series_uid)
        assert row is not None
        return row

    def jobs(self, series_uid: str) -> list[dict[str, Any]]:
        return queries.jobs_of_series(self.db(), series_uid)
