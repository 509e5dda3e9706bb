"""Writes small synthetic CT series to disk so that loader edge cases can be tested without real data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def numbered_phantom(n_slices: int, size: int = 32) -> npt.NDArray[np.int16]:
    """HU volume whose slice k is filled with 10*k (order checks), with a bright square that moves."""
    vol = np.zeros((n_slices, size, size), dtype=np.int16)
    for k in range(n_slices):
        vol[k] = 10 * k
        vol[k, 4:8, 4:8] = 1000
    return vol


def write_series(
    directory: Path,
    hu: npt.NDArray[np.int16],
    *,
    spacing: tuple[float, float, float] = (2.0, 0.7, 0.7),
    origin: Sequence[float] = (-100.0, -120.0, -50.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    positions: Sequence[Sequence[float]] | None = None,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    slope: float = 1.0,
    intercept: float = -1024.0,
    padding_value: int | None = None,
    padded_pixels: npt.NDArray[np.bool_] | None = None,
    instance_numbers: Sequence[int] | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """One single-frame CT file per slice; stored = (HU - intercept) / slope, signed 16 bit."""
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    row = np.asarray(row_direction, dtype=float)
    col = np.asarray(column_direction, dtype=float)
    normal = np.cross(row, col)
    paths = []
    for k in range(hu.shape[0]):
        stored = np.round((hu[k].astype(np.float64) - intercept) / slope).astype(np.int16)
        if padding_value is not None and padded_pixels is not None:
            stored[padded_pixels] = padding_value
        if positions is None:
            pos = np.asarray(origin, dtype=float) + k * spacing[0] * normal
        else:
            pos = np.asarray(positions[k], dtype=float)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.PatientName = "Phantom^Loader"
        ds.PatientID = "PHANTOM"
        ds.InstanceNumber = instance_numbers[k] if instance_numbers is not None else k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        if padding_value is not None:
            ds.PixelPaddingValue = padding_value
        ds.PixelData = stored.tobytes()
        path = directory / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def prepare_for_highdicom_legacy(ds: Dataset) -> None:
    """highdicom's legacy converter (LegacyConvertedEnhancedCTImage) wants a few patient/study/equipment
    attributes present that generated single-frame slices leave out."""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = "20200101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Manufacturer = "test"
