"""Malformed data and a full disk: a failure status with a reason, nothing lost, the node keeps serving.

The sender here is a pynetdicom SCU streaming raw file bytes: DCMTK's storescu parses files before
sending and refuses to send broken ones, so it cannot produce these inputs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from demo.ct_factory import make_ct_series
from demo.node_process import NodeProcess
from node.dimse_status import StoreStatus
from tests.dicom_files import dataset_bytes
from tests.peers.dcmtk import storescu

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk")]


def _part10(sop_uid: str, body: bytes, sop_class: str = CTImageStorage) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.3.4"
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue() + body


def _without_meta(buf: io.BytesIO) -> io.BytesIO:
    """save_as(enforce_file_format=False) keeps a dataset's preamble and File Meta: only the body is wanted."""
    data = buf.getvalue()
    if data[128:132] == b"DICM":
        group_length = int.from_bytes(data[140:144], "little")
        data = data[144 + group_length :]
    return io.BytesIO(data)


def _send_raw(node: NodeProcess, files: list[Path]) -> list[int]:
    """C-STORE each file's bytes exactly as they are; returns the DIMSE status of each."""
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        statuses = []
        for f in files:
            status = assoc.send_c_store(f)
            statuses.append(int(status.Status) if "Status" in status else -1)
        assoc.release()
        return statuses
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = False


def _malformed_cases(tmp_path: Path) -> dict[str, Path]:
    good = make_ct_series(tmp_path / "src", slices=3)
    cases: dict[str, bytes] = {}
    body = dataset_bytes(good[0])
    sop = str(pydicom.dcmread(good[0]).SOPInstanceUID)
    cases["truncated"] = _part10(sop, body[: len(body) - 3000])
    cases["garbage"] = _part10(generate_uid(), bytes(range(256)) * 20)
    ds = pydicom.dcmread(good[1])
    missing_uid = generate_uid()
    del ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=False)
    buf = _without_meta(buf)
    cases["missing_sop_instance_uid"] = _part10(missing_uid, buf.getvalue())
    ds = pydicom.dcmread(good[2])
    ds.SOPInstanceUID = "../../etc/x"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=False)
    buf = _without_meta(buf)
    cases["path_traversal_uid"] = _part10("../../etc/x", buf.getvalue())
    ds = pydicom.dcmread(good[2])
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "../../../tmp/evil"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=False)
    buf = _without_meta(buf)
    cases["path_traversal_study_uid"] = _part10(str(ds.SOPInstanceUID), buf.getvalue())
    out = {}
    for name, data in cases.items():
        p = tmp_path / f"{name}.dcm"
        p.write_bytes(data)
        out[name] = p
    return out


def test_malformed_datasets_get_failure_status_with_reason_and_node_keeps_serving(tmp_path: Path) -> None:
    cases = _malformed_cases(tmp_path)
    with NodeProcess(tmp_path) as node:
        statuses = _send_raw(node, list(cases.values()))
        by_case = dict(zip(cases, statuses, strict=True))
        # Garbage has no image in it: 0xA900 (no image for an image SOP class) is as right as 0xC000.
        refusals = {int(StoreStatus.CANNOT_UNDERSTAND), int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)}
        assert set(statuses) <= refusals, by_case
        assert by_case["truncated"] == by_case["path_traversal_uid"] == StoreStatus.CANNOT_UNDERSTAND, by_case
        # One log line per refusal, each with a reason.
        failures = [json.loads(line) for line in node.log_text().splitlines() if '"store_failed"' in line]
        assert len(failures) == len(cases)
        reasons = " | ".join(f["reason"] for f in failures)
        assert "pixel data truncated" in reasons
        assert "cannot be parsed" in reasons or "missing" in reasons
        assert "not a valid DICOM UID" in reasons
        # Nothing was stored, nothing escaped the spool.
        assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
        assert not list(tmp_path.rglob("evil")) and not (tmp_path / "etc").exists()
        # ...and the node still serves the next sender.
        good = make_ct_series(tmp_path / "after", slices=5)
        assert storescu(node.port, good, called=node.ae_title).returncode == 0
        assert node.db().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 5


def test_disk_below_watermark_refuses_with_out_of_resources_and_keeps_stored_data(tmp_path: Path) -> None:
    first = make_ct_series(tmp_path / "first", slices=4)
    with NodeProcess(tmp_path) as node:
        assert storescu(node.port, first, called=node.ae_title).returncode == 0
    stored_before = {r["sop_instance_uid"]: r["path"] for r in node.db().query("SELECT * FROM instances")}
    assert len(stored_before) == 4
    # Same node and data dir, now with a watermark above any real disk's free space.
    node.reconfigure({"storage": {"min_free_disk_mb": 10**9}})
    with node.start():
        more = make_ct_series(tmp_path / "more", slices=2)
        assert _send_raw(node, more) == [int(StoreStatus.OUT_OF_RESOURCES)] * 2
        assert '"store_refused"' in node.log_text()
        stored_after = {r["sop_instance_uid"]: r["path"] for r in node.db().query("SELECT * FROM instances")}
    assert stored_after == stored_before
    assert all(Path(p).exists() for p in stored_after.values())


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("dicom:\n  port: 70000\n", "dicom.port"),
        ("dicom:\n  ae_title: 'THIS_AE_TITLE_IS_TOO_LONG'\n", "dicom.ae_title"),
        ("dicom:\n  allowed_callers:\n    - ae_title: PACS\n      host: not-an-ip\n", "dicom.allowed_callers.0.host"),
        ("storage:\n  data_dir: /tmp/x\n  unknown_key: 1\n", "storage.unknown_key"),
        ("completeness:\n  quiet_period_s: 2\n  settle_s: 5\n", "completeness"),
        ("- just\n- a list\n", "top level"),
        (
            "routes:\n  - name: kv\n    when: {tag: AcquisitionNumber, equals: 1}\n    pipelines: [series-summary]\n",
            "route 'kv' tests AcquisitionNumber, which the node does not index",
        ),
        ("routes:\n  - name: x\n    pipelines: [no-such-pipeline]\n", "unknown pipeline"),
    ],
)
def test_bad_config_stops_start_up_naming_the_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    import subprocess
    import sys

    from demo.node_process import REPO_ROOT

    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        done = subprocess.run(
            [sys.executable, "-m", "node", *command], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert field in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
