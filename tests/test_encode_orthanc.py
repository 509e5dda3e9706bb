"""A real PACS (Orthanc 1.10 with DICOMweb) accepts the SEG, SR and SC over REST and C-STORE and serves
them back through QIDO-RS and WADO-RS."""

from __future__ import annotations

import email.parser
import email.policy
from io import BytesIO
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
import pytest

from tests.encode_orthanc_fixtures import StudyOnDisk, encode_siemens_case
from tests.peers.dimse import STATUS_SUCCESS, cstore
from tests.peers.net import free_port
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "orthanc")]

NODE_AET = "AINODE"
MODALITY_TAG = "00080060"
SERIES_UID_TAG = "0020000E"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> StudyOnDisk:
    return encode_siemens_case(tmp_path_factory.mktemp("encoded"))


def _output_paths(case: StudyOnDisk) -> list[Path]:
    return [p for paths in case.outputs.values() for p in paths]


def _series_by_modality(orthanc: OrthancPeer, study_uid: str) -> dict[str, str]:
    found = {}
    for item in orthanc.series_of_study(study_uid):
        found[item[MODALITY_TAG]["Value"][0]] = item[SERIES_UID_TAG]["Value"][0]
    return found


def _wado_instances(orthanc: OrthancPeer, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    """WADO-RS retrieve of a series: multipart/related application/dicom parts, parsed with pydicom."""
    response = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{series_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    response.raise_for_status()
    header = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + response.content)
    parts = [part.get_payload(decode=True) for part in message.iter_parts()]
    return [pydicom.dcmread(BytesIO(part)) for part in parts if isinstance(part, bytes)]


def _check_served_back(orthanc: OrthancPeer, case: StudyOnDisk) -> None:
    series = _series_by_modality(orthanc, case.study_instance_uid)
    for modality in ("SEG", "SR", "OT"):
        assert series.get(modality) == case.output_series[modality], f"QIDO does not list the {modality}"
    [seg_ds] = _wado_instances(orthanc, case.study_instance_uid, case.output_series["SEG"])
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    original = hd.seg.segread(case.outputs["SEG"][0])
    assert seg.SOPInstanceUID == original.SOPInstanceUID
    assert seg.get_tracking_ids() == original.get_tracking_ids()
    assert (seg.pixel_array == original.pixel_array).all()
    [sr_ds] = _wado_instances(orthanc, case.study_instance_uid, case.output_series["SR"])
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == 2
    scs = _wado_instances(orthanc, case.study_instance_uid, case.output_series["OT"])
    assert sorted(ds.SOPInstanceUID for ds in scs) == sorted(
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in case.outputs["OT"]
    )
    assert all(ds.BurnedInAnnotation == "YES" for ds in scs)


def test_orthanc_accepts_outputs_over_rest(tmp_path: Path, case: StudyOnDisk) -> None:
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        for path in _output_paths(case):
            answer = orthanc.upload(path)
            assert answer["Status"] == "Success", answer
        assert orthanc.instance_count() == len(_output_paths(case))
        _check_served_back(orthanc, case)


def test_orthanc_accepts_outputs_over_cstore(tmp_path: Path, case: StudyOnDisk) -> None:
    modalities = {"node": (NODE_AET, "127.0.0.1", free_port())}
    with OrthancPeer(tmp_path / "orthanc", modalities=modalities) as orthanc:
        statuses = cstore(orthanc.dicom_port, _output_paths(case), called=orthanc.aet, calling=NODE_AET)
        assert statuses == [STATUS_SUCCESS] * len(_output_paths(case))
        assert orthanc.instance_count() == len(_output_paths(case))
        _check_served_back(orthanc, case)
