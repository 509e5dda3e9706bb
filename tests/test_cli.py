"""The command line an admin uses: echo, send, status, check-config (real node, real DICOM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from demo.ct_factory import make_ct_series
from demo.node_process import REPO_ROOT, NodeProcess

pytestmark = pytest.mark.peers


def _ainode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout
    )


def test_echo_send_and_status(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "ct", slices=10)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with NodeProcess(tmp_path / "node") as node:
        echo = _ainode("echo", "127.0.0.1", str(node.port), node.ae_title, "--calling-aet", "TESTSCU")
        assert echo.returncode == 0 and "success" in echo.stdout
        refused = _ainode("echo", "127.0.0.1", str(node.port), node.ae_title, "--calling-aet", "NOBODY")
        assert refused.returncode == 1 and "C-ECHO failed" in refused.stderr
        sent = _ainode(
            "send", str(tmp_path / "ct"), "127.0.0.1", str(node.port), node.ae_title, "--calling-aet", "TESTSCU"
        )
        assert sent.returncode == 0, sent.stderr
        assert "sent 10/10" in sent.stdout
        node.wait_series_state(series_uid, "complete", timeout_s=20)
        status = _ainode("status", "--config", str(node.config_path), "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["studies"] == 1
        assert data["series"][0]["series_uid"] == series_uid
        assert data["series"][0]["state"] == "complete"
        assert data["series"][0]["instance_count"] == 10
        text = _ainode("status", "--config", str(node.config_path))
        assert series_uid in text.stdout and "complete" in text.stdout


def test_check_config_accepts_the_shipped_examples() -> None:
    for example in ("conf/node.yaml", "deploy/node.yaml"):
        done = _ainode("check-config", example)
        assert done.returncode == 0, done.stderr
        assert "OK" in done.stdout


def test_a_second_node_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "node") as node:
        second = _ainode("serve", "--config", str(node.config_path), "--port", "1", timeout=60)
        assert second.returncode == 2
        assert "in use by another running node" in second.stderr
