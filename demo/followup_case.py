"""Two chest CT studies of one patient a year apart, for the follow-up reading's tests and demo.

Built from a real background series (default: the Siemens 3 mm chest): the prior has nodules blended in at
known sizes; the follow-up is the same chest moved by a small rigid transform (a rotation about the table
axis and a shift), with the first nodules grown by known volumes, one removed and one new. The nodules are
blended as the training composites do it (``pipelines.lung_nodule.training.synthesis.blend``: soft-tissue
HU with texture, a partial-volume edge), as spheres so that their true volumes are known.

Each study gets its own UIDs, the given Patient ID and StudyDate; everything else is the real header.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import generate_uid
from scipy import ndimage

from demo.paths import SIEMENS_CT
from pipelines.base import NoduleCategory


@dataclass(frozen=True)
class PlannedNodule:
    """A nodule to blend: centre as fractional (z, y, x) voxel of the prior's grid, diameter in mm."""

    name: str
    centre_zyx: tuple[float, float, float]
    prior_diameter_mm: float | None  # None: not in the prior (new)
    current_diameter_mm: float | None  # None: gone in the follow-up (resolved)


@dataclass(frozen=True)
class RigidMotion:
    """The follow-up's chest = the prior's rotated about the slice axis (degrees) and shifted (voxels)."""

    rotation_deg: float = 2.0
    shift_zyx: tuple[int, int, int] = (2, 8, -6)


@dataclass
class StudyFiles:
    folder: Path
    study_uid: str
    series_uid: str
    study_date: datetime.date
    true_volumes_mm3: dict[str, float] = field(default_factory=dict)  # blended nodules' volumes (alpha > 0.5)


DEFAULT_PLAN = (
    PlannedNodule("grows-a", (0.0, 0.0, 0.0), 9.0, 12.0),
    PlannedNodule("grows-b", (0.0, 0.0, 0.0), 10.0, 12.5),
    PlannedNodule("stable", (0.0, 0.0, 0.0), 10.0, 10.0),
    PlannedNodule("resolves", (0.0, 0.0, 0.0), 9.0, None),
    PlannedNodule("new", (0.0, 0.0, 0.0), None, 10.0),
)


def read_background(folder: Path = SIEMENS_CT) -> tuple[list[pydicom.Dataset], npt.NDArray[np.float32]]:
    """The source slices sorted along z and their HU volume (z, y, x)."""
    datasets: list[pydicom.Dataset] = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu: npt.NDArray[np.float32] = np.stack(
        [ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )
    return datasets, hu


def lung_sites(hu: npt.NDArray[np.float32], spacing: tuple[float, float, float], count: int) -> list[tuple[int, ...]]:
    """``count`` voxels deep inside the lungs (>= 12 mm from any wall), far apart from each other."""
    body = hu > -500
    labels, _ = ndimage.label(body)
    body = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    filled = np.stack([ndimage.binary_fill_holes(s) for s in body])
    lungs = ndimage.binary_opening((hu < -400) & filled & ~body, iterations=2)
    depth = ndimage.distance_transform_edt(lungs, sampling=spacing)
    depth[: max(1, round(20 / spacing[0]))] = 0  # keep away from the volume's top and bottom slices
    depth[-max(1, round(20 / spacing[0])) :] = 0
    sites: list[tuple[int, ...]] = []
    candidates = np.argwhere(depth >= 12.0)
    order = np.argsort(-depth[tuple(candidates.T)])
    for index in order:
        site = tuple(int(v) for v in candidates[index])
        if all(np.linalg.norm((np.asarray(site) - s) * spacing) > 45.0 for s in sites):
            sites.append(site)
        if len(sites) == count:
            break
    if len(sites) < count:
        raise ValueError(f"only {len(sites)} lung sites found for {count} nodules")
    return sites


def _sphere_alpha(
    diameter_mm: float, spacing: tuple[float, float, float], centre_frac: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float32], tuple[int, int, int]]:
    """A sphere's partial-volume occupancy around a fractional voxel centre, and its box corner."""
    radius = diameter_mm / 2
    half = [int(np.ceil(radius / s)) + 2 for s in spacing]
    corner = tuple(int(np.floor(c)) - h for c, h in zip(centre_frac, half, strict=True))
    axes = [(np.arange(2 * h + 2) + k - c) * s for h, k, c, s in zip(half, corner, centre_frac, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    distance = np.sqrt(zz**2 + yy**2 + xx**2)
    # A ~1 mm soft edge, as a scanner's partial volume gives it.
    alpha = np.clip((radius - distance) / 1.0 + 0.5, 0.0, 1.0).astype(np.float32)
    return alpha, corner  # type: ignore[return-value]  # 3 ints


def _blend_sphere(
    hu: npt.NDArray[np.float32],
    centre: npt.NDArray[np.float64],
    diameter_mm: float,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> float:
    from pipelines.lung_nodule.training.synthesis import blend

    alpha, corner = _sphere_alpha(diameter_mm, spacing, centre)
    label = blend(hu, alpha, corner, NoduleCategory.SOLID, rng)
    return float(label.sum() * np.prod(spacing))


def _move(hu: npt.NDArray[np.float32], motion: RigidMotion) -> npt.NDArray[np.float32]:
    # Edges repeat the nearest voxel: a band of air cut into the body would look like a lesion to the model.
    rotated = ndimage.rotate(hu, motion.rotation_deg, axes=(1, 2), reshape=False, order=1, mode="nearest")
    return np.asarray(ndimage.shift(rotated, motion.shift_zyx, order=0, mode="nearest"), dtype=np.float32)


def _moved_point(zyx: npt.NDArray[np.float64], shape: tuple[int, ...], motion: RigidMotion) -> npt.NDArray[np.float64]:
    """Where a prior voxel lands after ``_move`` (ndimage.rotate turns about the array centre)."""
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    theta = np.deg2rad(motion.rotation_deg)
    z, y, x = zyx - centre
    # ndimage.rotate with axes (1, 2) turns the (row, column) plane by +theta (counter-clockwise on screen).
    y2 = np.cos(theta) * y + np.sin(theta) * x
    x2 = -np.sin(theta) * y + np.cos(theta) * x
    return np.asarray([z, y2, x2]) + centre + np.asarray(motion.shift_zyx, dtype=np.float64)


def _write_study(
    sources: list[pydicom.Dataset],
    hu: npt.NDArray[np.float32],
    folder: Path,
    *,
    patient_id: str,
    study_date: datetime.date,
    body_part: str,
) -> StudyFiles:
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for index, (source, plane) in enumerate(zip(sources, hu, strict=True)):
        ds = copy.deepcopy(source)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        stored = np.round((plane - intercept) / slope)
        info = np.iinfo(ds.pixel_array.dtype)
        ds.PixelData = np.clip(stored, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = "FOLLOWUP^TEST"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"{study_date:%Y%m%d}"
        ds.AccessionNumber = f"ACC{study_date:%Y%m%d}"
        ds.BodyPartExamined = body_part
        ds.PatientAge = "064Y"
        ds.PatientSex = "F"
        ds.save_as(folder / f"{index:04d}.dcm", enforce_file_format=True)
    return StudyFiles(folder, study_uid, series_uid, study_date)


def build_followup_pair(
    out: Path,
    *,
    patient_id: str,
    prior_date: datetime.date = datetime.date(2025, 11, 20),
    current_date: datetime.date = datetime.date(2026, 11, 20),
    plan: tuple[PlannedNodule, ...] = DEFAULT_PLAN,
    motion: RigidMotion = RigidMotion(),  # frozen dataclass: a constant
    background: Path = SIEMENS_CT,
    seed: int = 13,
) -> tuple[StudyFiles, StudyFiles, list[PlannedNodule]]:
    """Write the prior and the follow-up study; the plan's centres are filled in from real lung sites."""
    sources, hu = read_background(background)
    dy, dx = (float(v) for v in sources[0].PixelSpacing)
    dz = abs(float(sources[1].ImagePositionPatient[2]) - float(sources[0].ImagePositionPatient[2]))
    spacing = (dz, dy, dx)
    sites = lung_sites(hu, spacing, len(plan))
    placed = [PlannedNodule(p.name, tuple(float(v) for v in s), p.prior_diameter_mm, p.current_diameter_mm)  # type: ignore[arg-type]
              for p, s in zip(plan, sites, strict=True)]  # fmt: skip
    rng = np.random.default_rng(seed)
    prior_hu = hu.copy()
    current_hu = _move(hu, motion)
    prior_volumes: dict[str, float] = {}
    current_volumes: dict[str, float] = {}
    for nodule in placed:
        centre = np.asarray(nodule.centre_zyx)
        if nodule.prior_diameter_mm is not None:
            prior_volumes[nodule.name] = _blend_sphere(prior_hu, centre, nodule.prior_diameter_mm, spacing, rng)
        if nodule.current_diameter_mm is not None:
            moved = _moved_point(centre, hu.shape, motion)
            current_volumes[nodule.name] = _blend_sphere(current_hu, moved, nodule.current_diameter_mm, spacing, rng)
    prior = _write_study(sources, prior_hu, out / "prior", patient_id=patient_id, study_date=prior_date,
                         body_part="CHEST")  # fmt: skip
    current = _write_study(sources, current_hu, out / "current", patient_id=patient_id, study_date=current_date,
                           body_part="CHEST")  # fmt: skip
    prior.true_volumes_mm3, current.true_volumes_mm3 = prior_volumes, current_volumes
    return prior, current, placed


def write_other_body_part(
    out: Path, *, patient_id: str, study_date: datetime.date, background: Path = SIEMENS_CT
) -> StudyFiles:
    """The background as an earlier study labelled with another body part (a head CT, for the header)."""
    sources, hu = read_background(background)
    return _write_study(sources, hu, out, patient_id=patient_id, study_date=study_date, body_part="HEAD")
