"""A synthetic chest CT with one solid nodule, for the demo when no real CT is at hand.

Not anatomy: an elliptical body, two air-filled lungs with faint vessels, a spine, and a 10 mm
sphere of soft tissue in the right lung. Enough for the pipeline to find lungs and a nodule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


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
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(out_dir / f"{k:04d}.dcm", enforce_file_format=True)
    return out_dir
