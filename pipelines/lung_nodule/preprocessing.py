"""From a source-grid HU volume to the networks' working grid, and back: resampling, windowing, lung mask.

The working grid is the source grid scaled per axis (same orientation, voxel centres of the first and last
source voxel kept), so mapping between the two is a per-axis scale: no patient-space interpolation needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.intensity.array import ScaleIntensityRange
from monai.transforms.post.array import FillHoles, KeepLargestConnectedComponent
from monai.transforms.spatial.array import Resize
from scipy import ndimage

from pipelines.lung_nodule.config import HU_WINDOW, WORKING_SPACING_MM


@dataclass(frozen=True)
class WorkingGrid:
    """Per-axis scale between source voxel indices and working voxel indices (z, y, x)."""

    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def for_source(
        cls,
        source_shape: tuple[int, int, int],
        source_spacing: tuple[float, float, float],
        spacing_mm: float = WORKING_SPACING_MM,
    ) -> WorkingGrid:
        shape = tuple(
            max(2, round((n - 1) * s / spacing_mm) + 1) for n, s in zip(source_shape, source_spacing, strict=True)
        )
        return cls(source_shape, source_spacing, shape)  # type: ignore[arg-type]  # tuple of 3 from 3 axes

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Effective working spacing (mm), within a hair of WORKING_SPACING_MM."""
        return tuple(  # type: ignore[return-value]  # tuple of 3 from 3 axes
            (n - 1) * s / (m - 1) if n > 1 else s
            for n, s, m in zip(self.source_shape, self.source_spacing, self.shape, strict=True)
        )

    def scale(self) -> npt.NDArray[np.float64]:
        """Working index per source index, per axis."""
        return np.array(
            [(m - 1) / (n - 1) if n > 1 else 1.0 for n, m in zip(self.source_shape, self.shape, strict=True)]
        )

    def to_working(self, source_zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(source_zyx, dtype=np.float64) * self.scale()

    def to_source(self, working_zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(working_zyx, dtype=np.float64) / self.scale()


def resample(volume: npt.NDArray[np.float32], shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    """Trilinear resampling of a (z, y, x) array to ``shape`` with corner voxel centres aligned (MONAI)."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    resize = Resize(spatial_size=shape, mode="trilinear", align_corners=True, anti_aliasing=False)
    with torch.no_grad():
        out = resize(torch.from_numpy(np.ascontiguousarray(volume))[None])
    return np.asarray(out[0], dtype=np.float32)


def to_working_grid(hu: npt.NDArray[np.float32], grid: WorkingGrid) -> npt.NDArray[np.float32]:
    return resample(hu, grid.shape)


_WINDOW = ScaleIntensityRange(a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)


def window(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """HU to the [0, 1] network input (MONAI ScaleIntensityRange with clipping)."""
    return np.asarray(_WINDOW(hu), dtype=np.float32)


def lung_mask(hu: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> npt.NDArray[np.bool_]:
    """Both lungs, holes (vessels, nodules) filled, on any grid (meant for the ~2 mm working grid).

    Air inside the body below -400 HU, minus the air outside the body and the airways' large trunk,
    then the two largest components, closed so that vessels and juxtapleural nodules are inside.
    """
    body = hu > -500
    # The patient: the largest dense component, with its inside (lungs) filled slice by slice.
    body_t = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False)(
        torch.from_numpy(body[None].astype(np.uint8))
    )
    body = np.asarray(body_t[0], dtype=bool)
    body_filled = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air_inside = (hu < -400) & body_filled & ~body
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndimage.label(air_inside)
    if n == 0:
        return np.zeros_like(air_inside)
    sizes = ndimage.sum_labels(air_inside, labels, index=np.arange(1, n + 1)) * voxel_ml
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= 20.0]  # lungs are > 20 ml each
    lungs = np.isin(labels, keep)
    # Close over vessels and nodules: ~6 mm ball, then fill enclosed cavities (MONAI FillHoles).
    # Work inside the lungs' bounding box: the closing is the expensive step.
    radius = max(1, round(6.0 / min(spacing)))
    box = bounding_box(lungs, radius)
    if box is None:
        return lungs
    crop = tuple(slice(a, b) for a, b in zip(*box, strict=True))
    closed = ndimage.binary_closing(np.pad(lungs[crop], radius), structure=_ball(radius))[
        radius:-radius, radius:-radius, radius:-radius
    ]
    filled = FillHoles(applied_labels=[1])(torch.from_numpy(closed[None].astype(np.uint8)))
    out = np.zeros_like(lungs)
    out[crop] = np.asarray(filled[0], dtype=bool)
    return out


def _ball(radius: int) -> npt.NDArray[np.bool_]:
    r = np.arange(-radius, radius + 1)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return np.asarray(zz**2 + yy**2 + xx**2 <= radius**2)


def bounding_box(
    mask: npt.NDArray[np.bool_], margin: int = 0
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Half-open (start, stop) of the True voxels, grown by ``margin`` and clipped to the array."""
    if not mask.any():
        return None
    coords = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    start = tuple(max(0, int(c[0]) - margin) for c in coords)
    stop = tuple(min(n, int(c[-1]) + 1 + margin) for c, n in zip(coords, mask.shape, strict=True))
    return start, stop  # type: ignore[return-value]  # tuples of 3 from 3 axes


def crop_around(
    volume: npt.NDArray[Any], centre: npt.NDArray[np.int64], half: npt.NDArray[np.int64], fill: float
) -> npt.NDArray[np.float32]:
    """Fixed-size (2 * half) crop centred on ``centre``, padded with ``fill`` where it leaves the volume."""
    out = np.full(tuple(2 * half), fill, dtype=np.float32)
    src = [slice(max(0, int(c - h)), min(n, int(c + h))) for c, h, n in zip(centre, half, volume.shape, strict=True)]
    dst = [slice(s.start - int(c - h), s.stop - int(c - h)) for s, c, h in zip(src, centre, half, strict=True)]
    if all(s.stop > s.start for s in src):
        out[tuple(dst)] = volume[tuple(src)]
    return out
