"""The node as a storage SCP, driven by DCMTK's storescu/echoscu (the real peer) on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from demo.ct_factory import CANARIES, make_ct_series
from demo.node_process import NodeProcess
from demo.paths import PHILIPS_CT as PHILIPS
from demo.paths import SIEMENS_CT as SIEMENS
from tests.dicom_files import dataset_bytes
from tests.peers.dcmtk import StoreSCP, echoscu, storescu

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "philips-ct", "dcmtk")]


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    with NodeProcess(tmp_path) as n:
        yield n


def _series_uid(folder: Path) -> str:
    first = sorted(folder.iterdir())[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def test_echo_from_known_caller_succeeds_and_unknown_caller_is_rejected(node: NodeProcess) -> None:
    ok = echoscu(node.port, called=node.ae_title, calling="STORESCU")
    assert ok.returncode == 0, ok.stderr
    refused = echoscu(node.port, called=node.ae_title, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert '"calling_ae": "INTRUDER"' in node.log_text()
    assert "calling AE title not in the allow-list" in node.log_text()


@pytest.mark.parametrize(
    ("folder", "proposal"),
    # The Philips files are Implicit VR: propose only that, so that node and reference negotiate
    # the same transfer syntax and bytes can be compared.
    [(SIEMENS, []), (PHILIPS, ["-xi"])],
    ids=["siemens-explicit", "philips-implicit"],
)
def test_real_series_stored_byte_identical_and_complete_by_geometry(
    node: NodeProcess, folder: Path, proposal: list[str], tmp_path: Path
) -> None:
    t0 = time.monotonic()
    sent = storescu(node.port, [folder], called=node.ae_title, extra_args=proposal)
    assert sent.returncode == 0, sent.stderr
    series_uid = _series_uid(folder)
    row = node.wait_series_state(series_uid, "complete", timeout_s=20)
    elapsed = time.monotonic() - t0
    # Complete by geometry within seconds, long before the 30 s quiet period.
    assert row["completion_reason"].startswith("geometry"), row["completion_reason"]
    assert elapsed < 25
    sources = sorted(folder.iterdir())
    assert row["instance_count"] == len(sources)
    stored = {r["sop_instance_uid"]: Path(r["path"]) for r in node.db().query("SELECT * FROM instances")}
    for src in sources:
        sop = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
        assert sop in stored
    # Byte-identical to what storescu put on the wire: DCMTK's own storescp in bit-preserving
    # mode receives the same send and is the reference (storescu re-encodes some elements,
    # e.g. sequence lengths, so the source files themselves are not).
    with StoreSCP(tmp_path / "reference") as reference:
        assert storescu(reference.port, [folder], called=reference.aet, extra_args=proposal).returncode == 0
    for ref in (tmp_path / "reference").iterdir():
        sop = str(pydicom.dcmread(ref, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[sop]) == dataset_bytes(ref), f"{sop} differs from what storescp received"
    # The series was routed: a job exists and the default pipeline ran on it.
    jobs = node.jobs(series_uid)
    assert [j["pipeline"] for j in jobs] == ["series-summary"]


def test_series_with_missing_slice_waits_for_quiet_period(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "gap", slices=20, skip=[10])
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with NodeProcess(tmp_path, {"completeness": {"quiet_period_s": 6, "settle_s": 1}}) as node:
        t0 = time.monotonic()
        assert storescu(node.port, [tmp_path / "gap"], called=node.ae_title).returncode == 0
        time.sleep(3)  # well past settle_s: a contiguous series would be complete by now
        row = node.series_row(series_uid)
        assert row is not None and row["state"] == "receiving"
        row = node.wait_series_state(series_uid, "complete", timeout_s=20)
        assert row["completion_reason"].startswith("quiet")
        assert time.monotonic() - t0 >= 6


def test_images_in_acquisition_holds_back_an_incomplete_contiguous_run(tmp_path: Path) -> None:
    # 15 contiguous slices of an acquisition that announces 20: not complete by geometry.
    files = make_ct_series(tmp_path / "partial", slices=15, images_in_acquisition=20)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with NodeProcess(tmp_path, {"completeness": {"quiet_period_s": 5, "settle_s": 1}}) as node:
        assert storescu(node.port, [tmp_path / "partial"], called=node.ae_title).returncode == 0
        row = node.wait_series_state(series_uid, "complete", timeout_s=20)
        assert row["completion_reason"].startswith("quiet"), row["completion_reason"]


def test_late_instance_reopens_series_and_supersedes_work(node: NodeProcess, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "s", slices=12)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert storescu(node.port, files[:-1], called=node.ae_title).returncode == 0
    node.wait_series_state(series_uid, "complete", timeout_s=15)
    assert storescu(node.port, files[-1:], called=node.ae_title).returncode == 0
    row = node.wait_series_state(series_uid, "complete", timeout_s=15)
    assert row["generation"] == 2
    assert row["instance_count"] == 12
    jobs = node.jobs(series_uid)
    assert len(jobs) == 2
    assert jobs[0]["generation"] == 1 and jobs[0]["state"] == "superseded"
    assert jobs[1]["generation"] == 2


def test_same_instance_again_is_idempotent(node: NodeProcess, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "s", slices=6)
    assert storescu(node.port, files, called=node.ae_title).returncode == 0
    assert storescu(node.port, files, called=node.ae_title).returncode == 0
    rows = node.db().query("SELECT replaced_count FROM instances")
    assert len(rows) == 6
    assert all(r["replaced_count"] == 0 for r in rows)
    # Different content under the same SOP Instance UID: the newer one is kept and recorded.
    ds = pydicom.dcmread(files[0])
    ds.SeriesDescription = "edited at the modality"
    ds.save_as(files[0])
    assert storescu(node.port, files[:1], called=node.ae_title).returncode == 0
    row = node.db().query("SELECT path, replaced_count FROM instances WHERE sop_instance_uid = ?", (ds.SOPInstanceUID,))
    assert row[0]["replaced_count"] == 1
    assert pydicom.dcmread(row[0]["path"]).SeriesDescription == "edited at the modality"


@pytest.mark.needs("gdcm")
def test_compressed_transfer_syntaxes_are_stored_as_received(node: NodeProcess, tmp_path: Path) -> None:
    import subprocess

    files = make_ct_series(tmp_path / "raw", slices=4)
    out = tmp_path / "compressed"
    out.mkdir()
    expected = {}
    # (gdcmconv option, storescu option proposing that compressed syntax)
    encodings = [("--jpegls", "-xt"), ("--j2k", "-xv"), ("--rle", "-xr"), ("--jpeg", "-xs")]
    for (gdcm_flag, propose_flag), f in zip(encodings, files, strict=True):
        target = out / f.name
        subprocess.run(["gdcmconv", gdcm_flag, str(f), str(target)], check=True, capture_output=True)
        ds = pydicom.dcmread(target, stop_before_pixels=True)
        expected[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
        sent = storescu(node.port, [target], called=node.ae_title, extra_args=[propose_flag])
        assert sent.returncode == 0, sent.stderr
    rows = node.db().query("SELECT sop_instance_uid, transfer_syntax_uid FROM instances")
    assert {r["sop_instance_uid"]: r["transfer_syntax_uid"] for r in rows} == expected
    assert len(set(expected.values())) == 4


def test_patient_identity_never_reaches_the_log(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "canary", slices=8)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    # DEBUG level: the most talkative the node gets.
    with NodeProcess(tmp_path, {"logging": {"level": "DEBUG"}}) as node:
        assert storescu(node.port, [tmp_path / "canary"], called=node.ae_title).returncode == 0
        node.wait_series_state(series_uid, "complete", timeout_s=15)

        def job_finished() -> bool:
            return any(j["state"] == "done" for j in node.jobs(series_uid))

        from tests.peers.net import wait_until

        wait_until(job_finished, 30, "the series-summary job")

        def log_covers_the_data_path() -> bool:
            # The worker logs job_done after committing "done", from another process: wait for the line.
            text = node.log_text()
            return "instance_stored" in text and "job_done" in text

        wait_until(log_covers_the_data_path, 30, "instance_stored and job_done in the log")
        log = node.log_text()
    for canary in CANARIES:
        assert canary not in log, f"{canary} leaked into the log"
