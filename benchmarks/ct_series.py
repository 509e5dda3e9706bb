"""A 300-slice 512x512 chest CT for benchmarks, built from the real Siemens series in ../shared/data.

The 99 real slices (3 mm apart) are reused in order to fill 300 slices 1 mm apart, each with its own
SOP Instance UID and position, so the series looks like a thin-slice chest CT to a receiver.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"
SIEMENS = SHARED_CT / "siemens-chest-99"


def make_thin_slice_series(out_dir: Path, slices: int = 300, spacing_mm: float = 1.0) -> list[Path]:
    if not SIEMENS.exists():
        raise SystemExit(f"{SIEMENS} not found: the benchmark needs ../shared/data beside the repository")
    sources = sorted(SIEMENS.glob("*.dcm"))
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
