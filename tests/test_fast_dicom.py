"""The hot-path DICOM helpers agree with pydicom, and catch what a full parse would catch."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, generate_uid

from demo.ct_factory import make_ct_series
from node.errors import InvalidDatasetError
from node.store.fast_dicom import encode_file_meta, parse_header
from tests.dicom_files import dataset_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("version", ["AINODE_0.1.0", "AINODE_0.1"])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless])
def test_file_meta_is_byte_identical_to_pydicom(ts: str, version: str) -> None:
    sop_class, sop_uid, impl = "1.2.840.10008.5.1.4.1.1.2", generate_uid(), "1.2.826.0.1.3680043.10.1234.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = impl
    meta.ImplementationVersionName = version
    expected = io.BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert encode_file_meta(sop_class, sop_uid, ts, impl, version) == expected.getvalue()


def test_parse_header_reads_tags_and_rejects_truncation(tmp_path: Path) -> None:
    f = make_ct_series(tmp_path, slices=1)[0]
    body = dataset_bytes(f)
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", ExplicitVRLittleEndian, "1.2.3.4", "X")
    ds = parse_header(body, UID(ExplicitVRLittleEndian), meta)
    full = pydicom.dcmread(f)
    assert ds.SOPInstanceUID == full.SOPInstanceUID
    assert ds.ImagePositionPatient == full.ImagePositionPatient
    assert "PixelData" not in ds  # checked, not copied
    for cut in (1, 100, 8000):
        with pytest.raises(InvalidDatasetError, match=r"truncated|cut short|cannot be parsed"):
            parse_header(body[: len(body) - cut], UID(ExplicitVRLittleEndian), meta)
