"""Generated DICOM test data: small CT series with controllable geometry, identity and encoding."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Canary identity: tests grep every log line for these and must never find them.
CANARY_PATIENT_NAME = "CANARYNAME^PHI"
CANARY_PATIENT_ID = "CANARYPID0042"
CANARY_BIRTH_DATE = "19010203"
CANARY_ACCESSION = "CANARYACC77"
CANARIES = (CANARY_PATIENT_NAME, "CANARYNAME", CANARY_PATIENT_ID, CANARY_BIRTH_DATE, CANARY_ACCESSION)


def make_ct_series(
    folder: Path,
    *,
    slices: int = 24,
    rows: int = 64,
    columns: int = 64,
    spacing_mm: float = 2.5,
    pixel_spacing_mm: float = 0.7,
    skip: Iterable[int] = (),
    study_uid: str | None = None,
    series_uid: str | None = None,
    images_in_acquisition: int | None = None,
    patient_name: str = CANARY_PATIENT_NAME,
    patient_id: str = CANARY_PATIENT_ID,
    seed: int = 0,
) -> list[Path]:
    """A chest-CT-like series (body ellipse with air-filled 'lungs'), one file per slice, in
    Explicit VR Little Endian. ``skip`` leaves slice indices out (a gap)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    yy, xx = np.mgrid[0:rows, 0:columns]
    cy, cx = rows / 2, columns / 2
    body = ((yy - cy) / (rows * 0.42)) ** 2 + ((xx - cx) / (columns * 0.45)) ** 2 <= 1
    lung_l = ((yy - cy) / (rows * 0.3)) ** 2 + ((xx - cx * 0.6) / (columns * 0.15)) ** 2 <= 1
    lung_r = ((yy - cy) / (rows * 0.3)) ** 2 + ((xx - cx * 1.4) / (columns * 0.15)) ** 2 <= 1
    paths = []
    skipped = set(skip)
    for k in range(slices):
        if k in skipped:
            continue
        hu = np.full((rows, columns), -1000.0)
        hu[body] = 40.0
        hu[lung_l | lung_r] = -850.0
        hu += rng.normal(0, 10, hu.shape)
        stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) < 62 else generate_uid()
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = CANARY_BIRTH_DATE
        ds.PatientSex = "O"
        ds.AccessionNumber = CANARY_ACCESSION
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = "Generated chest CT"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.Manufacturer = "ainode-tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-columns * pixel_spacing_mm / 2, -rows * pixel_spacing_mm / 2, -k * spacing_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
        ds.SliceThickness = spacing_mm
        if images_in_acquisition is not None:
            ds.ImagesInAcquisition = images_in_acquisition
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = stored.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its File Meta group (what "byte-identical dataset" compares)."""
    import io

    from pydicom.filereader import _read_file_meta_info, read_preamble

    data = path.read_bytes()
    stream = io.BytesIO(data)
    read_preamble(stream, force=False)
    _read_file_meta_info(stream)
    return data[stream.tell() :]


def first_dataset(path: Path) -> Dataset:
    import pydicom

    return pydicom.dcmread(path)
