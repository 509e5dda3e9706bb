"""Helpers for the encoder tests: a CTVolume from real DICOM files, and nodules drawn into its geometry.

``load_ct`` is a small local loader (sort along the slice normal, rescale to HU) that works on in-memory
datasets, so tests can edit headers (e.g. the character set) without writing files; a test checks that
the node's ``pipelines.loading.load_series`` gives the same slices.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom

from pipelines.base import (
    CTVolume,
    Finding,
    ModelIdentity,
    NoduleCategory,
    PipelineResult,
    ResultStatus,
    SeriesInfo,
    SourceSlice,
    VolumeGeometry,
    VoxelBox,
)

MODEL = ModelIdentity(name="lungnod-test", version="1.2.3", weights_sha256="ab" * 32)


def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]


def load_ct(datasets: list[pydicom.Dataset]) -> CTVolume:
    first = datasets[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    ordered = sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in ordered])
    dz = float(np.median(np.diff(positions @ normal)))
    dy, dx = (float(v) for v in first.PixelSpacing)
    hu = np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            for ds in ordered
        ]
    )
    geometry = VolumeGeometry(
        spacing_mm=(dz, dy, dx),
        origin_mm=tuple(positions[0]),  # type: ignore[arg-type]  # 3 floats
        row_direction=tuple(row_dir),  # type: ignore[arg-type]
        column_direction=tuple(col_dir),  # type: ignore[arg-type]
        slice_direction=tuple(normal),  # type: ignore[arg-type]
    )
    slices = tuple(SourceSlice(str(ds.SOPInstanceUID), str(ds.SOPClassUID)) for ds in ordered)
    return CTVolume(hu=hu, geometry=geometry, slices=slices, info=SeriesInfo(modality="CT"))


def sphere_finding(
    volume: CTVolume,
    number: int,
    centre_zyx: tuple[int, int, int],
    radius_mm: float,
    *,
    probability: float = 0.8,
    lobe: str | None = "right upper lobe",
    with_gradcam: bool = True,
) -> Finding:
    """An ellipsoid of ``radius_mm`` (a sphere in mm) around a voxel, with a Gaussian Grad-CAM."""
    dz, dy, dx = volume.geometry.spacing_mm
    rz, ry, rx = (int(np.ceil(radius_mm / s)) + 1 for s in (dz, dy, dx))
    cz, cy, cx = centre_zyx
    start = (max(cz - rz, 0), max(cy - ry, 0), max(cx - rx, 0))
    stop = (
        min(cz + rz + 1, volume.shape[0]),
        min(cy + ry + 1, volume.shape[1]),
        min(cx + rx + 1, volume.shape[2]),
    )
    zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop, strict=True)), indexing="ij")
    dist2 = ((zz - cz) * dz) ** 2 + ((yy - cy) * dy) ** 2 + ((xx - cx) * dx) ** 2
    mask = dist2 <= radius_mm**2
    gradcam = np.exp(-dist2 / (2 * radius_mm**2)).astype(np.float32) if with_gradcam else None
    centre = volume.geometry.voxel_to_patient([cz, cy, cx])
    return Finding(
        number=number,
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        long_axis_mm=2 * radius_mm,
        short_axis_mm=2 * radius_mm * 0.9,
        volume_mm3=float(mask.sum() * dz * dy * dx),
        box=VoxelBox(start=start, stop=stop),
        mask=mask,
        malignancy_probability=probability,
        detection_score=0.95,
        gradcam=gradcam,
        category=NoduleCategory.SOLID,
        lobe=lobe,
        probability_map=np.where(mask, 0.9, 0.0).astype(np.float32),
    )


def result_with(findings: list[Finding]) -> PipelineResult:
    return PipelineResult(pipeline="lung-nodules", status=ResultStatus.COMPLETED, model=MODEL, findings=tuple(findings))


def two_nodules(volume: CTVolume) -> PipelineResult:
    z, y, x = volume.shape
    return result_with(
        [
            sphere_finding(volume, 1, (z // 2, y // 2 - 60, x // 2 - 110), 8.0, probability=0.83),
            sphere_finding(volume, 2, (z // 3, y // 2 + 20, x // 2 + 100), 5.0, probability=0.12, lobe=None),
        ]
    )


def with_mask(finding: Finding, mask: np.ndarray) -> Finding:
    return replace(finding, mask=mask)
