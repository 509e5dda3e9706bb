"""A hostile network: crafted DIMSE messages and connections that never become associations.

The crafted C-STORE requests come from a pynetdicom SCU driven below its public API (demo/hostile.py, shared
with benchmarks/outside_campaign.py: DCMTK's storescu cannot send an empty or over-long Affected SOP Instance
UID); the allowed caller that must still get through is DCMTK's echoscu / storescu.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from demo.ct_factory import make_ct_series
from demo.hostile import c_store_body, crafted_store, hostile_connections
from demo.node_process import NodeProcess
from node.dimse_status import StoreStatus
from tests.dicom_files import dataset_bytes
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.net import wait_until

pytestmark = [pytest.mark.peers, pytest.mark.needs("dcmtk")]

MAX_ASSOCIATIONS = 2


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    workdir = tmp_path_factory.mktemp("hostile")
    with NodeProcess(workdir, {"dicom": {"max_associations": MAX_ASSOCIATIONS}}) as running:
        yield running


def _associate(node: NodeProcess, syntax: str = ExplicitVRLittleEndian) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    return assoc


def test_c_store_without_sop_instance_uid_is_answered_with_a_failure(node: NodeProcess, tmp_path: Path) -> None:
    [path] = make_ct_series(tmp_path / "s", slices=1)
    assoc = _associate(node)
    try:
        started = time.monotonic()
        status = crafted_store(assoc, dataset_bytes(path), "", msg_id=1)
        assert status == StoreStatus.CANNOT_UNDERSTAND
        assert time.monotonic() - started < 5
        # The association goes on: the next, good instance is stored.
        good = pydicom.dcmread(path)
        assert crafted_store(assoc, dataset_bytes(path), str(good.SOPInstanceUID), msg_id=2) == StoreStatus.SUCCESS
    finally:
        assoc.release()
    assert "C-STORE-RQ without AffectedSOPInstanceUID" in node.log_text()


def test_sop_instance_uid_over_64_characters_fails_that_store_not_the_association(
    node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own SCU must be allowed to send the bad UID.
    monkeypatch.setitem(pynetdicom_config.VALIDATORS, "UI", lambda value: (True, ""))
    paths = make_ct_series(tmp_path / "s", slices=2)
    long_uid = "1.2." + "3" * 70
    ds = pydicom.dcmread(paths[0])
    ds.SOPInstanceUID = long_uid
    assoc = _associate(node)
    try:
        assert crafted_store(assoc, c_store_body(ds), long_uid, msg_id=1) == StoreStatus.CANNOT_UNDERSTAND
        assert assoc.is_established
        good = pydicom.dcmread(paths[1])
        assert crafted_store(assoc, dataset_bytes(paths[1]), str(good.SOPInstanceUID), 2) == StoreStatus.SUCCESS
    finally:
        assoc.release()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_connections_without_association_take_no_slot_and_are_dropped(node: NodeProcess, tmp_path: Path) -> None:
    held = hostile_connections(node.port)
    try:
        # More half-open connections than slots, and an allowed caller still gets through at once.
        assert len(held) > MAX_ASSOCIATIONS
        done = echoscu(node.port, called=node.ae_title, calling="STORESCU", timeout_s=20)
        assert done.returncode == 0, done.stderr
        series = make_ct_series(tmp_path / "s", slices=3)
        assert storescu(node.port, series, called=node.ae_title).returncode == 0
        # And the node drops them after its handshake timeout (5 s), not after minutes.
        started = time.monotonic()
        wait_until(lambda: all(_closed_by_peer(s) for s in held), 15, "the node to drop half-open connections")
        assert time.monotonic() - started < 15
    finally:
        for sock in held:
            sock.close()


def test_allowed_callers_beyond_max_associations_are_refused_transiently(node: NodeProcess) -> None:
    held = [_associate(node) for _ in range(MAX_ASSOCIATIONS)]
    try:
        done = echoscu(node.port, called=node.ae_title, calling="STORESCU", timeout_s=20)
        assert done.returncode != 0
    finally:
        for assoc in held:
            assoc.release()
    assert echoscu(node.port, called=node.ae_title, calling="STORESCU", timeout_s=20).returncode == 0


def _store_one(node: NodeProcess, body: bytes, sop_uid: str, syntax: str = ExplicitVRLittleEndian) -> int | None:
    assoc = _associate(node, syntax)
    try:
        return crafted_store(assoc, body, sop_uid, msg_id=1)
    finally:
        assoc.release()


def _indexed(node: NodeProcess, sop_uid: str) -> bool:
    node.db()  # the node commits index rows at release; see InstanceStore.flush
    return bool(node.db().query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_uid,)))


@pytest.mark.parametrize(
    ("element", "vr", "bad_vr"),
    [
        (b"\x20\x00\x13\x00", b"IS", b"ZZ"),
        (b"\x08\x00\x50\x00", b"SH", b"SX"),
        (b"\x08\x00\x16\x00", b"UI", b"ZZ"),
        (b"\x08\x00\x90\x00", b"PN", b"ZZ"),
    ],
    ids=["InstanceNumber", "AccessionNumber", "SOPClassUID", "empty_ReferringPhysicianName"],
)
def test_unknown_vr_is_refused_before_success_never_acknowledged_unindexed(
    node: NodeProcess, tmp_path: Path, element: bytes, vr: bytes, bad_vr: bytes
) -> None:
    [path] = make_ct_series(tmp_path / "s", slices=1)
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = "ACC1"
    body = c_store_body(ds)
    assert body.count(element + vr) == 1
    status = _store_one(node, body.replace(element + vr, element + bad_vr), str(ds.SOPInstanceUID))
    assert status == StoreStatus.CANNOT_UNDERSTAND  # not Success, not 0x0110 with a traceback
    assert not _indexed(node, str(ds.SOPInstanceUID))
    assert "unknown VR" in node.log_text()


def _jpeg_ls_rows(ds: pydicom.Dataset) -> pydicom.Dataset:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([bytes(range(256)) * 8])  # fragments that are no JPEG-LS codestream
    ds["PixelData"].VR = "OB"
    return ds


def _image_cases(path: Path) -> dict[str, tuple[bytes, str, int]]:
    from pydicom.uid import JPEGLSLossless, RLELossless

    cases: dict[str, tuple[bytes, str, int]] = {}
    refused, no_image = int(StoreStatus.CANNOT_UNDERSTAND), int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    ds = pydicom.dcmread(path)
    body = c_store_body(ds)
    cases["cut_before_pixel_data"] = (body[: body.index(b"\xe0\x7f\x10\x00")], ExplicitVRLittleEndian, no_image)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    cases["no_pixel_data"] = (c_store_body(ds), ExplicitVRLittleEndian, no_image)
    ds = pydicom.dcmread(path)
    ds.Rows = 0
    cases["rows_0"] = (c_store_body(ds), ExplicitVRLittleEndian, no_image)
    cases["native_pixels_under_rle"] = (c_store_body(pydicom.dcmread(path)), RLELossless, refused)
    cases["garbage_fragments"] = (c_store_body(_jpeg_ls_rows(pydicom.dcmread(path))), JPEGLSLossless, refused)
    return cases


def test_image_storage_without_a_decodable_image_is_refused(node: NodeProcess, tmp_path: Path) -> None:
    [path] = make_ct_series(tmp_path / "s", slices=1)
    sop_uid = str(pydicom.dcmread(path).SOPInstanceUID)
    statuses = {
        name: (_store_one(node, body, sop_uid, syntax), expected)
        for name, (body, syntax, expected) in _image_cases(path).items()
    }
    assert all(got == expected for got, expected in statuses.values()), statuses
    assert not _indexed(node, sop_uid)
    # The intact instance is stored.
    assert _store_one(node, c_store_body(pydicom.dcmread(path)), sop_uid) == StoreStatus.SUCCESS


def _header_cases(path: Path) -> dict[str, bytes]:
    """Headers the node cannot use: pixels pydicom cannot decode, UIDs it cannot file (found by
    benchmarks/outside_campaign.py: acknowledged, then unreadable or indexed under another UID)."""
    cases: dict[str, bytes] = {}
    body = c_store_body(pydicom.dcmread(path))
    bits_stored = b"\x28\x00\x01\x01US"
    assert body.count(bits_stored) == 1
    cases["bits_stored_as_DA"] = body.replace(bits_stored, b"\x28\x00\x01\x01DA")
    pixel_data = b"\xe0\x7f\x10\x00OW"
    assert body.count(pixel_data) == 1
    cases["pixel_data_as_UR"] = body.replace(pixel_data, b"\xe0\x7f\x10\x00UR")
    for keyword in ("SamplesPerPixel", "BitsStored", "PixelRepresentation", "PhotometricInterpretation"):
        ds = pydicom.dcmread(path)
        delattr(ds, keyword)
        cases[f"no_{keyword}"] = c_store_body(ds)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME9"
    cases["unknown_photometric"] = c_store_body(ds)
    ds = pydicom.dcmread(path)
    ds.BitsStored = 17
    cases["bits_stored_over_allocated"] = c_store_body(ds)
    # Identifying UIDs under another VR keep their NUL padding: the index would file another UID.
    for keyword, tag, vr in (
        ("SOPInstanceUID", b"\x08\x00\x18\x00", b"AE"),
        ("SeriesInstanceUID", b"\x20\x00\x0e\x00", b"LO"),
    ):
        assert body.count(tag + b"UI") == 1
        cases[f"{keyword}_as_{vr.decode()}"] = body.replace(tag + b"UI", tag + vr)
    return cases


def test_headers_the_node_cannot_use_are_refused_before_success(node: NodeProcess, tmp_path: Path) -> None:
    [path] = make_ct_series(tmp_path / "s", slices=1)
    sop_uid = str(pydicom.dcmread(path).SOPInstanceUID)
    refusals = (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    statuses = {name: _store_one(node, body, sop_uid) for name, body in _header_cases(path).items()}
    assert all(status in refusals for status in statuses.values()), statuses
    assert not _indexed(node, sop_uid)


def test_deflate_bomb_is_refused_quickly(node: NodeProcess, tmp_path: Path) -> None:
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    [path] = make_ct_series(tmp_path / "s", slices=1)
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    body = c_store_body(ds) + b"\x00" * (32 * 1024 * 1024)  # 32 MB of zeros after the image
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = deflater.compress(body) + deflater.flush()
    assert len(bomb) < 64 * 1024
    started = time.monotonic()
    status = _store_one(node, bomb, str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian)
    assert status == StoreStatus.CANNOT_UNDERSTAND
    assert time.monotonic() - started < 5
    assert "inflates past" in node.log_text()
    # A genuinely deflated instance is still accepted.
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    good = deflater.compress(c_store_body(ds)) + deflater.flush()
    assert _store_one(node, good, str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian) == StoreStatus.SUCCESS


def test_no_patient_data_in_the_log_when_a_uid_swallows_the_patient_module(node: NodeProcess, tmp_path: Path) -> None:
    import json
    import struct

    from demo.ct_factory import CANARIES, CANARY_ACCESSION, CANARY_PATIENT_ID

    [path] = make_ct_series(tmp_path / "s", slices=1)
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = CANARY_ACCESSION
    body = bytearray(c_store_body(ds))
    uid_at = body.index(b"\x08\x00\x18\x00UI")
    pid_at = body.index(b"\x10\x00\x20\x00LO")
    (pid_length,) = struct.unpack_from("<H", body, pid_at + 6)
    struct.pack_into("<H", body, uid_at + 6, pid_at + 8 + pid_length - (uid_at + 8))
    status = _store_one(node, bytes(body), str(ds.SOPInstanceUID))
    assert status is not None and status != StoreStatus.SUCCESS
    # A "UID" that is patient data, announced and in the dataset: refused without echoing it.

    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = CANARY_PATIENT_ID
    assert _store_one(node, c_store_body(ds), CANARY_PATIENT_ID) == StoreStatus.CANNOT_UNDERSTAND
    log_text = node.log_text()
    for canary in CANARIES:
        assert canary not in log_text
    # Every line is one JSON event: no raw UserWarning lines from pydicom on stderr.
    lines = [line for line in log_text.splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:5]
