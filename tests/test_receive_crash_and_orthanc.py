"""Crash safety (kill -9 mid-send) and a real PACS (Orthanc) sending a study to the node."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from demo.ct_factory import make_ct_series
from demo.node_process import NodeProcess
from demo.paths import PHILIPS_CT as PHILIPS
from tests.dicom_files import dataset_bytes
from tests.peers.dcmtk import STORESCU, storescu
from tests.peers.net import dcmtk_env, wait_until
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk")]


def _acknowledged(storescu_log: str) -> list[Path]:
    """Files storescu saw a Success response for (storescu -v prints one line per file and response)."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        m = re.match(r"I: Sending file: (.+)$", line.strip())
        if m:
            current = Path(m.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def test_kill_9_during_send_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "series", slices=120, rows=128, columns=128)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    node = NodeProcess(tmp_path, {"workers": {"processes": 0}})
    ever_acked: set[Path] = set()
    for round_number in range(3):
        node.start()
        before = node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
        sender = subprocess.Popen(
            [STORESCU, "-v", "-aet", "STORESCU", "-aec", node.ae_title, "127.0.0.1", str(node.port),
             *[str(f) for f in files]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env(),
        )  # fmt: skip
        # Kill once the node has taken some new instances: mid-send, not before or after it.
        target = before + 10 + round_number * 5
        wait_until(
            lambda t=target: node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] >= t,
            30, "the node to store part of the series",
        )  # fmt: skip
        node.kill()
        out, _ = sender.communicate(timeout=60)
        acked = _acknowledged(out)
        assert acked, "storescu saw no acknowledgement before the kill"
        ever_acked.update(acked)
        # Restart: every instance ever acknowledged is there, byte-identical, none half-written.
        node.start()
        stored = {r["sop_instance_uid"]: Path(r["path"]) for r in node.db().query("SELECT * FROM instances")}
        for f in ever_acked:
            sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            assert sop in stored, f"{f.name} was acknowledged but is missing after kill -9"
            assert dataset_bytes(stored[sop]) == dataset_bytes(f)
        assert not list((node.data_dir / "spool" / ".incoming").iterdir()), "temp files survived start-up"
        for path in stored.values():
            pydicom.dcmread(path)  # every indexed file is complete and parses
        node.stop()
    # The sender retries the whole series, as a PACS would: it completes, with every slice once.
    node.reconfigure({"completeness": {"settle_s": 1}})
    with node.start():
        assert storescu(node.port, files, called=node.ae_title).returncode == 0
        row = node.wait_series_state(series_uid, "complete", timeout_s=20)
        assert row["instance_count"] == len(files)
        assert row["completion_reason"].startswith("geometry")


@pytest.mark.needs("philips-ct", "orthanc")
def test_orthanc_sends_a_study_to_the_node(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "node") as node:
        modalities = {"node": (node.ae_title, "127.0.0.1", node.port)}
        with OrthancPeer(tmp_path / "orthanc", modalities=modalities) as orthanc:
            assert orthanc.upload_dir(PHILIPS) == 64
            study_id = orthanc.get("/studies")[0]
            t0 = time.monotonic()
            job = orthanc.post("/modalities/node/store", study_id)
            assert "FailedInstancesCount" not in job or job["FailedInstancesCount"] == 0, job
        series_uid = str(pydicom.dcmread(sorted(PHILIPS.iterdir())[0], stop_before_pixels=True).SeriesInstanceUID)
        row = node.wait_series_state(series_uid, "complete", timeout_s=30)
        assert row["instance_count"] == 64
        assert row["calling_ae"] == "ORTHANC"
        assert row["completion_reason"].startswith("geometry")
        assert time.monotonic() - t0 < 30


def test_spool_files_missing_from_the_index_are_indexed_at_start_up(tmp_path: Path) -> None:
    """The indexer commits rows just after Success is answered; if the node dies in between, the file is
    durable but unindexed. Start-up must index it (simulated here by deleting its rows)."""
    files = make_ct_series(tmp_path / "ct", slices=8)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    node = NodeProcess(tmp_path / "node", {"workers": {"processes": 0}})
    with node:
        assert storescu(node.port, files, called=node.ae_title).returncode == 0
        node.wait_series_state(series_uid, "complete", timeout_s=20)
    with node.db().transaction() as conn:
        conn.execute("DELETE FROM instances WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM instances LIMIT 3)")
    assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 5
    with node.start():
        assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 8
        assert '"instances_reindexed": 3' in node.log_text()


def test_unreadable_spool_file_of_an_earlier_version_is_set_aside_and_reported_once(tmp_path: Path) -> None:
    """Earlier versions acknowledged instances with an unknown VR, which then failed indexing at every
    start-up. Such a file is moved beside the spool (data_dir/unreadable) and reported once."""
    [good] = make_ct_series(tmp_path / "ct", slices=1)
    ds = pydicom.dcmread(good)
    data = good.read_bytes().replace(b"\x20\x00\x13\x00IS", b"\x20\x00\x13\x00ZZ")
    node = NodeProcess(tmp_path / "node", {"workers": {"processes": 0}})
    spooled = (
        node.data_dir / "spool" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    )
    spooled.parent.mkdir(parents=True)
    spooled.write_bytes(data)
    with node:
        pass
    assert not spooled.exists()
    kept = node.data_dir / "unreadable" / spooled.relative_to(node.data_dir / "spool")
    assert kept.read_bytes() == data
    assert node.log_text().count('"spool_file_unreadable"') == 1 and "unknown VR" in node.log_text()
    with node.start():
        pass
    assert node.log_text().count('"spool_file_unreadable"') == 1
