"""Size of a nodule mask on the source grid: centre, long/short axis (on its largest axial slice), volume."""

from __future__ import annotations

import contextlib

import numpy as np
import numpy.typing as npt
from scipy.spatial import ConvexHull, QhullError


def axes_mm(mask2d: npt.NDArray[np.bool_], row_spacing: float, col_spacing: float) -> tuple[float, float]:
    """Longest in-plane diameter and the widest extent perpendicular to it (RECIST-style), in mm."""
    pts = np.argwhere(mask2d).astype(np.float64)
    if len(pts) == 0:
        return 0.0, 0.0
    # Pixel corners, so that a single pixel measures one pixel across.
    corners = np.concatenate([pts + d for d in ([-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5])])
    mm = corners * np.array([row_spacing, col_spacing])
    with contextlib.suppress(QhullError):  # collinear points (one row of pixels): keep all corners
        mm = mm[ConvexHull(mm).vertices]
    diffs = mm[:, None, :] - mm[None, :, :]
    dist = np.sqrt((diffs**2).sum(-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    long_axis = float(dist[i, j])
    direction = (mm[j] - mm[i]) / max(long_axis, 1e-9)
    perpendicular = np.array([-direction[1], direction[0]])
    proj = mm @ perpendicular
    return long_axis, float(proj.max() - proj.min())


def largest_slice_axes(mask: npt.NDArray[np.bool_], spacing: tuple[float, float, float]) -> tuple[float, float]:
    areas = mask.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    return axes_mm(mask[k], spacing[1], spacing[2])
