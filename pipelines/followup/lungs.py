"""A coarse lung mask without torch: where the lungs are (for aligning two exams) and how much of them is
emphysematous (for the Brock model).

The lung-nodule pipeline has a finer mask (``pipelines.lung_nodule.preprocessing.lung_mask``) but it needs
torch and MONAI, which the node process never imports. Here: every other voxel of a ~3 mm grid, air inside the
body below -400 HU, the two largest components. Good enough for a centroid and a histogram.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipelines.base import CTVolume, Vector3

# Sampling step of the coarse grid (mm): fine enough for a centroid to ~1 mm, cheap on two CPU cores.
GRID_MM = 3.0
# Emphysema: the fraction of lung voxels below -950 HU (%LAA-950). 5 % is the usual CT threshold for
# emphysema being present (e.g. Gevenois 1996; COPDGene); the PanCan readers scored emphysema visually,
# so this is a stated stand-in for their score, not their method.
LAA_HU = -950.0
EMPHYSEMA_FRACTION = 0.05


def _strides(spacing_mm: Vector3) -> tuple[int, int, int]:
    return tuple(max(1, round(GRID_MM / s)) for s in spacing_mm)  # type: ignore[return-value]  # 3 in, 3 out


def coarse_lung_mask(volume: CTVolume) -> tuple[npt.NDArray[np.bool_], tuple[int, int, int]]:
    """The lungs on a strided grid, and the strides (z, y, x) from the source grid to it."""
    strides = _strides(volume.geometry.spacing_mm)
    hu = volume.hu[:: strides[0], :: strides[1], :: strides[2]]
    body = hu > -500
    labels, n = ndimage.label(body)
    if n == 0:
        return np.zeros_like(body), strides
    sizes = ndimage.sum_labels(body, labels, index=np.arange(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air_inside = (hu < -400) & filled & ~body
    labels, n = ndimage.label(air_inside)
    if n == 0:
        return air_inside, strides
    sizes = ndimage.sum_labels(air_inside, labels, index=np.arange(1, n + 1))
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2]]
    return np.isin(labels, keep), strides


def lung_centroid_mm(volume: CTVolume) -> Vector3 | None:
    """The centroid of both lungs in patient coordinates (mm); None when no lungs are found."""
    mask, strides = coarse_lung_mask(volume)
    if not mask.any():
        return None
    zyx = np.argwhere(mask).mean(axis=0) * np.asarray(strides)
    x, y, z = volume.geometry.voxel_to_patient(zyx)
    return (float(x), float(y), float(z))


def emphysema_fraction(volume: CTVolume) -> float | None:
    """%LAA-950 of the lungs (0..1); None when no lungs are found."""
    mask, strides = coarse_lung_mask(volume)
    if not mask.any():
        return None
    hu = volume.hu[:: strides[0], :: strides[1], :: strides[2]]
    return float(np.mean(hu[mask] < LAA_HU))
