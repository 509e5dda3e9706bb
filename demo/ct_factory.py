"""Every generated CT series of the project, in one place: the tests', the demo's and the benchmarks'.

- ``make_ct_series``: a small chest-like series with a canary identity (receive, index, API, log tests)
- ``write_series`` / ``numbered_phantom``: controllable geometry and rescale (loader edge cases)
- ``write_demo_ct``: a synthetic chest with one 10 mm nodule, for the demo when no real CT is at hand
- ``make_thin_slice_series``: a 300-slice thin-slice series built from the real Siemens CT (receive benchmarks)
- ``make_resampled_series``: the real Siemens CT resampled to 300 slices (the AI benchmark)

The generated ones write one single-frame Part-10 file per slice through ``save_slice``; the two built from
the real series keep its File Meta and transfer syntax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from demo.paths import SIEMENS_CT


def save_slice(ds: Dataset, path: Path) -> Path:
    """Give ``ds`` its File Meta (Explicit VR Little Endian) and write it as a Part-10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


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
        paths.append(save_slice(ds, folder / f"slice{k:04d}.dcm"))
    return paths


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
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
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
        paths.append(save_slice(ds, directory / f"slice_{k:04d}.dcm"))
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


def write_demo_ct(out_dir: Path, *, slices: int = 100, size: int = 256, spacing_mm: float = 1.5) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pixel_mm = 340.0 / size
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[0:size, 0:size] * pixel_mm
    cy, cx = 170.0, 170.0
    body = ((yy - cy) / 120) ** 2 + ((xx - cx) / 160) ** 2 <= 1
    spine = ((yy - 265) / 18) ** 2 + ((xx - cx) / 18) ** 2 <= 1
    nodule_centre = (slices * spacing_mm * 0.5, 150.0, 110.0)  # (z, y, x) mm, inside the right lung
    for k in range(slices):
        z = k * spacing_mm
        taper = max(0.0, 1 - abs(z - slices * spacing_mm / 2) / (slices * spacing_mm * 0.62))
        lung_r = ((yy - 165) / (85 * taper + 1e-3)) ** 2 + ((xx - 105) / (55 * taper + 1e-3)) ** 2 <= 1
        lung_l = ((yy - 165) / (85 * taper + 1e-3)) ** 2 + ((xx - 235) / (55 * taper + 1e-3)) ** 2 <= 1
        hu = np.full((size, size), -1000.0)
        hu[body] = 35.0
        hu[lung_r | lung_l] = -860.0
        hu[spine] = 500.0
        vessels = (np.sin(xx / 7 + k / 5) * np.cos(yy / 9) > 0.97) & (lung_r | lung_l)
        hu[vessels] = -100.0
        dz, (ny, nx) = z - nodule_centre[0], nodule_centre[1:]
        nodule = (dz**2 + (yy - ny) ** 2 + (xx - nx) ** 2) <= 5.0**2
        hu[nodule] = 40.0
        hu += rng.normal(0, 12, hu.shape)
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DEMO^SYNTHETIC", "DEMO0001", "", "O"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20260101", "120000", "CT CHEST (synthetic demo)"
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "CT", "CHEST", "Synthetic chest CT"
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, k + 1, "ainode-demo"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-170.0, -170.0, -z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = spacing_mm
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.clip(hu, -1024, 3071).astype(np.int16).tobytes()
        save_slice(ds, out_dir / f"{k:04d}.dcm")
    return out_dir


def make_thin_slice_series(
    out_dir: Path, slices: int = 300, spacing_mm: float = 1.0, *, source: Path = SIEMENS_CT
) -> list[Path]:
    """``slices`` slices ``spacing_mm`` apart from the real series in ``source`` (its slices reused in order),
    each with its own SOP Instance UID and position, so the series looks like a thin-slice chest CT."""
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: the benchmarks need ../shared/data beside the repository")
    sources = sorted(source.glob("*.dcm"))
    templates = [pydicom.dcmread(p) for p in sources]
    templates.sort(key=lambda ds: float(ds.ImagePositionPatient[2]), reverse=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    top = float(templates[0].ImagePositionPatient[2])
    paths = []
    for k in range(slices):
        ds = templates[min(len(templates) - 1, k * len(templates) // slices)].copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, top - k * spacing_mm]
        ds.SliceLocation = top - k * spacing_mm
        ds.SliceThickness = spacing_mm
        ds.InstanceNumber = k + 1
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_resampled_series(out: Path, n_slices: int = 300, *, source: Path = SIEMENS_CT) -> None:
    """The real series in ``source`` resampled (linear in z) to ``n_slices`` slices over the same extent,
    one new Series Instance UID; pixel data really interpolated (the AI benchmark's input)."""
    from scipy import ndimage

    if not source.exists():
        raise FileNotFoundError(f"{source} not found: the benchmarks need ../shared/data beside the repository")
    files = sorted(source.glob("*.dcm"))
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    stack = np.stack([d.pixel_array.astype(np.float32) for d in datasets])
    z0 = float(datasets[0].ImagePositionPatient[2])
    z1 = float(datasets[-1].ImagePositionPatient[2])
    spacing = (z1 - z0) / (n_slices - 1)
    resampled = ndimage.zoom(stack, (n_slices / len(datasets), 1, 1), order=1)
    series_uid = generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n_slices):
        ds = datasets[0].copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [
            ds.ImagePositionPatient[0],
            ds.ImagePositionPatient[1],
            round(z0 + k * spacing, 3),
        ]
        ds.SliceThickness = round(spacing, 3)
        ds.PixelData = np.round(resampled[k]).astype(datasets[0].pixel_array.dtype).tobytes()
        ds.save_as(out / f"{k:04d}.dcm")
