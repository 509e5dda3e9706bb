"""A DICOM CT series (files on disk) to a :class:`~pipelines.base.CTVolume` in Hounsfield units.

What this module takes care of, and why:

* slices are ordered by their position along the slice normal (ImagePositionPatient · normal), never by
  InstanceNumber, which scanners and PACS re-number freely;
* RescaleSlope/RescaleIntercept per slice (or per frame), so mixed rescales still give one HU volume;
* PixelPaddingValue (and PixelPaddingRangeLimit) become air (-1024 HU) instead of -3000-ish "HU";
* oblique orientations are kept as they are: the geometry carries the direction cosines;
* gantry tilt (slice positions step off the normal) is resampled: each slice is shifted in-plane so the
  stack becomes orthogonal, the source slice of every z index stays the same;
* uneven spacing (missing slices, mixed reconstructions) is refused with the numbers, because resampling
  would break the one-volume-slice-per-source-image contract the DICOM SEG encoder relies on;
* Enhanced CT / Legacy Converted Enhanced CT multi-frame objects (functional groups);
* compressed transfer syntaxes, decoded by pydicom's pixel handlers (pylibjpeg, openjpeg, libjpeg, RLE, GDCM).

Everything it cannot handle raises :class:`~pipelines.base.NotApplicable` with a reason a user can act on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage
from scipy import ndimage

from pipelines.base import CTVolume, NotApplicable, SeriesInfo, SourceSlice, VolumeGeometry

AIR_HU = -1024.0

MULTI_FRAME_CT_CLASSES = {EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}

# Tolerances. Direction cosines of slices in one stack agree to ~1e-4 in practice; 1e-3 absorbs rounding
# in the DS strings. Slice spacing may jitter by a few percent (DS rounding, table feed); larger differences
# mean missing slices or mixed reconstructions.
ORIENTATION_TOLERANCE = 1e-3
SPACING_RELATIVE_TOLERANCE = 0.1
# Tilt below this angle is rounding noise; above MAX_TILT_DEGREES something else is going on.
MIN_TILT_DEGREES = 0.05
MAX_TILT_DEGREES = 45.0


@dataclass
class _Frame:
    """One 2D image of the series: a single-frame file, or one frame of a multi-frame file."""

    dataset: Dataset
    frame_index: int | None  # 0-based index into a multi-frame object, None for single-frame
    position: npt.NDArray[np.float64]  # ImagePositionPatient (mm)
    row_direction: npt.NDArray[np.float64]
    column_direction: npt.NDArray[np.float64]
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float
    slice_thickness: float | None


def load_series(paths: Sequence[Path], series_instance_uid: str | None = None) -> CTVolume:
    """Read the DICOM files of one CT series into a HU volume on the source slice grid.

    ``paths`` may contain other files (DICOMDIR, non-DICOM files): they are skipped. If the files hold
    more than one series, ``series_instance_uid`` picks one; without it the call is refused with the list.
    """
    datasets = _read_datasets(paths)
    datasets = _select_series(datasets, series_instance_uid)
    info = _series_info(datasets[0])
    _check_applicable(datasets, info)

    frames = [frame for ds in datasets for frame in _frames_of(ds)]
    row_dir, col_dir = _check_consistent(frames)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    frames.sort(key=lambda f: float(f.position @ normal))
    along_normal = np.array([float(f.position @ normal) for f in frames])

    slice_spacing = _slice_spacing(along_normal, frames)
    hu = _stack_hu(frames)
    tilt_shifts = _tilt_shifts(frames, row_dir, col_dir, normal, along_normal)
    if tilt_shifts is not None:
        hu = _remove_tilt(hu, tilt_shifts)

    geometry = VolumeGeometry(
        spacing_mm=(slice_spacing, frames[0].pixel_spacing[0], frames[0].pixel_spacing[1]),
        origin_mm=_vec3(frames[0].position),
        row_direction=_vec3(row_dir),
        column_direction=_vec3(col_dir),
        slice_direction=_vec3(normal),
    )
    slices = tuple(
        SourceSlice(
            sop_instance_uid=str(f.dataset.SOPInstanceUID),
            sop_class_uid=str(f.dataset.SOPClassUID),
            frame_number=None if f.frame_index is None else f.frame_index + 1,
        )
        for f in frames
    )
    if info.slice_thickness_mm is None and frames[0].slice_thickness is not None:
        info = SeriesInfo(
            modality=info.modality,
            series_instance_uid=info.series_instance_uid,
            image_type=info.image_type,
            body_part_examined=info.body_part_examined,
            series_description=info.series_description,
            slice_thickness_mm=frames[0].slice_thickness,
        )
    return CTVolume(hu=hu, geometry=geometry, slices=slices, info=info)


def load_series_dir(directory: Path, series_instance_uid: str | None = None) -> CTVolume:
    """All files below ``directory`` (recursively) as one series; see :func:`load_series`."""
    if not directory.is_dir():
        raise NotApplicable(f"{directory} is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    return load_series(paths, series_instance_uid)


# --- reading and grouping -------------------------------------------------------------------------------


def _read_datasets(paths: Sequence[Path]) -> list[Dataset]:
    datasets: list[Dataset] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue  # not DICOM (README, thumbnails...): skipped on purpose
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            continue  # DICOMDIR, SR, presentation states...
        datasets.append(ds)
    if not datasets:
        raise NotApplicable("no DICOM images among the given files")
    return datasets


def _select_series(datasets: list[Dataset], series_instance_uid: str | None) -> list[Dataset]:
    by_series: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if series_instance_uid is not None:
        if series_instance_uid not in by_series:
            raise NotApplicable(f"series {series_instance_uid} is not among the given files")
        return by_series[series_instance_uid]
    if len(by_series) > 1:
        listing = ", ".join(f"{uid or '<no UID>'} ({len(v)} images)" for uid, v in by_series.items())
        raise NotApplicable(f"the files hold {len(by_series)} series, pass one: {listing}")
    return datasets


def _series_info(ds: Dataset) -> SeriesInfo:
    thickness = ds.get("SliceThickness")
    return SeriesInfo(
        modality=str(ds.get("Modality", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        image_type=tuple(str(v) for v in _as_list(ds.get("ImageType", []))),
        body_part_examined=str(ds.get("BodyPartExamined", "")),
        series_description=str(ds.get("SeriesDescription", "")),
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
    )


def _check_applicable(datasets: list[Dataset], info: SeriesInfo) -> None:
    if info.modality != "CT":
        raise NotApplicable(f"modality is {info.modality or 'missing'}, not CT")
    if any(t.upper() == "LOCALIZER" for t in info.image_type):
        raise NotApplicable("the series is a localizer (scout), not a cross-sectional CT")
    for ds in datasets:
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise NotApplicable("colour images (SamplesPerPixel > 1) are not CT slices")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 and str(ds.SOPClassUID) not in MULTI_FRAME_CT_CLASSES:
            raise NotApplicable(f"multi-frame object of SOP class {ds.SOPClassUID} without CT functional groups")


# --- frames and their geometry --------------------------------------------------------------------------


def _frames_of(ds: Dataset) -> list[_Frame]:
    if str(ds.SOPClassUID) in MULTI_FRAME_CT_CLASSES:
        return _enhanced_frames(ds)
    try:
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        spacing = [float(v) for v in ds.PixelSpacing]
    except AttributeError as exc:
        raise NotApplicable(f"image {ds.get('SOPInstanceUID', '?')} lacks plane geometry ({exc})") from None
    thickness = ds.get("SliceThickness")
    return [
        _Frame(
            dataset=ds,
            frame_index=None,
            position=position,
            row_direction=np.array(orientation[:3], dtype=np.float64),
            column_direction=np.array(orientation[3:], dtype=np.float64),
            pixel_spacing=(spacing[0], spacing[1]),
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            slice_thickness=float(thickness) if thickness not in (None, "") else None,
        )
    ]


def functional_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """Item of ``sequence`` for frame ``index``: per-frame group first, shared group second."""
    for groups_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(groups_name)
        if not groups:
            continue
        group = groups[index] if groups_name.startswith("PerFrame") else groups[0]
        seq = group.get(sequence)
        if seq:
            item: Dataset = seq[0]
            return item
    return None


def _enhanced_frames(ds: Dataset) -> list[_Frame]:
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames: list[_Frame] = []
    for i in range(n_frames):
        position_item = functional_group(ds, i, "PlanePositionSequence")
        orientation_item = functional_group(ds, i, "PlaneOrientationSequence")
        measures_item = functional_group(ds, i, "PixelMeasuresSequence")
        if position_item is None or orientation_item is None or measures_item is None:
            raise NotApplicable(f"multi-frame CT frame {i + 1} lacks plane position/orientation/spacing")
        frame_type = functional_group(ds, i, "CTImageFrameTypeSequence")
        if frame_type is not None and "LOCALIZER" in [str(v) for v in _as_list(frame_type.get("FrameType"))]:
            raise NotApplicable("the series is a localizer (scout), not a cross-sectional CT")
        transform = functional_group(ds, i, "PixelValueTransformationSequence")
        source = transform if transform is not None else ds
        orientation = [float(v) for v in orientation_item.ImageOrientationPatient]
        spacing = [float(v) for v in measures_item.PixelSpacing]
        thickness = measures_item.get("SliceThickness")
        frames.append(
            _Frame(
                dataset=ds,
                frame_index=i,
                position=np.array([float(v) for v in position_item.ImagePositionPatient], dtype=np.float64),
                row_direction=np.array(orientation[:3], dtype=np.float64),
                column_direction=np.array(orientation[3:], dtype=np.float64),
                pixel_spacing=(spacing[0], spacing[1]),
                slope=float(source.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(source.get("RescaleIntercept", 0.0) or 0.0),
                slice_thickness=float(thickness) if thickness not in (None, "") else None,
            )
        )
    return frames


def _check_consistent(
    frames: list[_Frame],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Refuse stacks that mix matrix sizes, orientations or spacings; return unit (row, column) directions."""
    first = frames[0]
    shape = (int(first.dataset.Rows), int(first.dataset.Columns))
    for f in frames[1:]:
        if (int(f.dataset.Rows), int(f.dataset.Columns)) != shape:
            raise NotApplicable("the images of the series differ in matrix size")
        if (
            np.abs(f.row_direction - first.row_direction).max() > ORIENTATION_TOLERANCE
            or np.abs(f.column_direction - first.column_direction).max() > ORIENTATION_TOLERANCE
        ):
            raise NotApplicable("the images of the series differ in orientation (more than one stack)")
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise NotApplicable("the images of the series differ in pixel spacing")
    units = []
    for vector in (first.row_direction, first.column_direction):
        norm = float(np.linalg.norm(vector))
        if abs(norm - 1.0) > 1e-2:
            raise NotApplicable(f"ImageOrientationPatient is not made of unit vectors (norm {norm:.3f})")
        units.append(vector / norm)
    if abs(float(units[0] @ units[1])) > 1e-2:
        raise NotApplicable("ImageOrientationPatient row and column directions are not orthogonal")
    return units[0], units[1]


def _slice_spacing(along_normal: npt.NDArray[np.float64], frames: list[_Frame]) -> float:
    if len(frames) == 1:
        # One slice has no spacing; use its thickness so the geometry stays valid (the pipeline
        # refuses single slices on its own terms).
        return frames[0].slice_thickness or 1.0
    gaps = np.diff(along_normal)
    if gaps.min() < 1e-3:
        dup = int(np.argmin(gaps))
        raise NotApplicable(
            f"two images share the slice position {along_normal[dup]:.2f} mm "
            "(duplicates or more than one acquisition in the series)"
        )
    median = float(np.median(gaps))
    if (gaps.max() - gaps.min()) > SPACING_RELATIVE_TOLERANCE * median:
        raise NotApplicable(
            f"uneven slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm "
            f"(median {median:.2f}); missing slices or mixed reconstructions"
        )
    return float(gaps.mean())


# --- pixels ---------------------------------------------------------------------------------------------


def _stack_hu(frames: list[_Frame]) -> npt.NDArray[np.float32]:
    first = frames[0].dataset
    out = np.empty((len(frames), int(first.Rows), int(first.Columns)), dtype=np.float32)
    decoded: dict[int, npt.NDArray[Any]] = {}  # id(dataset) -> all frames of a multi-frame object
    for k, f in enumerate(frames):
        stored = _stored_values(f, decoded)
        hu = stored.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)
        padding = _padding_mask(f.dataset, stored)
        if padding is not None:
            hu[padding] = AIR_HU
        out[k] = hu
    return out


def _stored_values(frame: _Frame, decoded: dict[int, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    ds = frame.dataset
    key = id(ds)
    if key not in decoded:
        try:
            decoded[key] = ds.pixel_array
        except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError by handler
            ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
            raise NotApplicable(f"cannot decode pixel data (transfer syntax {ts}): {exc}") from None
    pixels = decoded[key]
    if frame.frame_index is None:
        return pixels if pixels.ndim == 2 else pixels[0]
    return pixels[frame.frame_index] if pixels.ndim == 3 else pixels


def _padding_mask(ds: Dataset, stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    pad_value = _as_signed(int(pad), ds)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return np.asarray(stored == pad_value)
    limit_value = _as_signed(int(limit), ds)
    low, high = sorted((pad_value, limit_value))
    return np.asarray((stored >= low) & (stored <= high))


def _as_signed(value: int, ds: Dataset) -> int:
    """PixelPaddingValue read as US when the pixels are signed: reinterpret the bit pattern."""
    bits = int(ds.get("BitsAllocated", 16))
    if int(ds.get("PixelRepresentation", 0)) == 1 and value >= 1 << (bits - 1):
        return value - (1 << bits)
    return value


# --- gantry tilt ----------------------------------------------------------------------------------------


def _tilt_shifts(
    frames: list[_Frame],
    row_dir: npt.NDArray[np.float64],
    col_dir: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    along_normal: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64] | None:
    """In-plane offset (rows, columns) of each slice against an orthogonal stack, or None when not tilted."""
    if len(frames) < 2:
        return None
    positions = np.stack([f.position for f in frames])
    step = positions[-1] - positions[0]
    cos_angle = abs(float(step @ normal)) / float(np.linalg.norm(step))
    angle = math.degrees(math.acos(min(1.0, cos_angle)))
    if angle < MIN_TILT_DEGREES:
        return None
    if angle > MAX_TILT_DEGREES:
        raise NotApplicable(f"slice positions step {angle:.1f}° off the slice normal; not a tilted stack")
    offsets = positions - positions[0] - np.outer(along_normal - along_normal[0], normal)
    row_spacing, col_spacing = frames[0].pixel_spacing
    # Moving one row steps along the column direction, one column along the row direction.
    rows = offsets @ col_dir / row_spacing
    cols = offsets @ row_dir / col_spacing
    return np.stack([rows, cols], axis=1)


def _remove_tilt(hu: npt.NDArray[np.float32], shifts: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Shift each slice by its in-plane offset so that voxel (k, i, j) sits on the orthogonal grid."""
    out = np.empty_like(hu)
    for k in range(hu.shape[0]):
        # Orthogonal voxel (i, j) of slice k is source pixel (i - rows_k, j - cols_k).
        out[k] = ndimage.shift(hu[k], shift=shifts[k], order=1, mode="constant", cval=AIR_HU)
    return out


# --- small helpers --------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _vec3(v: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))
