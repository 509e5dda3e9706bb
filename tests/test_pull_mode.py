"""Pull mode: `ainode process --dicomweb URL --study UID` fetches a study by WADO-RS from a real
Orthanc and it goes down the same path as a received one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from demo.node_process import REPO_ROOT, NodeProcess
from demo.paths import PHILIPS_CT as PHILIPS
from tests.peers.net import wait_until
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.e2e, pytest.mark.needs("philips-ct", "orthanc")]


def test_process_pulls_a_study_by_wado_rs_and_the_node_runs_it(tmp_path: Path) -> None:
    first = pydicom.dcmread(sorted(PHILIPS.iterdir())[0], stop_before_pixels=True)
    with OrthancPeer(tmp_path / "orthanc") as orthanc, NodeProcess(tmp_path / "node") as node:
        assert orthanc.upload_dir(PHILIPS) == 64
        done = subprocess.run(
            [sys.executable, "-m", "node", "process", "--config", str(node.config_path),
             "--dicomweb", orthanc.dicomweb_url, "--study", str(first.StudyInstanceUID)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "64 instance(s) stored" in done.stdout
        row = node.wait_series_state(str(first.SeriesInstanceUID), "complete", timeout_s=30)
        assert row["instance_count"] == 64
        assert row["calling_ae"] == "WADO-RS"

        def last_run_done() -> bool:
            # An earlier run is superseded (and leaves no results) if the series looked complete before the
            # last instance was indexed; what matters is that the complete series ran.
            states = [j["state"] for j in node.jobs(row["series_uid"])]
            return bool(states) and states[-1] == "done" and all(s == "superseded" for s in states[:-1])

        wait_until(last_run_done, 60, "the job")
