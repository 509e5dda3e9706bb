"""Candidate splitting: a nodule touching a vessel becomes a candidate of its own (hand-made volumes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.lung_nodule import config
from pipelines.lung_nodule.pipeline import split_sparse_component

pytestmark = pytest.mark.ai

SPACING = (2.0, 2.0, 2.0)


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def _only_component(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    labels, n = ndimage.label(mask)
    assert n == 1
    (box,) = ndimage.find_objects(labels)
    return labels.astype(np.int32), box


def test_nodule_on_a_long_vessel_is_split_off() -> None:
    shape = (40, 40, 80)
    mask = _ball(shape, (20, 20, 20), 4.0)  # 16 mm nodule
    mask[19:22, 19:22, 5:78] = True  # a 6 mm thick, 146 mm long vessel through it
    labels, box = _only_component(mask)
    extent = max((s.stop - s.start) * d for s, d in zip(box, SPACING, strict=True))
    assert extent > config.MAX_CANDIDATE_EXTENT_MM  # unsplit, the whole thing would be dropped as too long
    pieces = split_sparse_component(labels, box, 1, SPACING)
    assert len(pieces) >= 2
    with_centre = [(label, sl) for label, sl in pieces if labels[20, 20, 20] == label]
    assert len(with_centre) == 1
    label, sl = with_centre[0]
    piece_extent = max((s.stop - s.start) * d for s, d in zip(sl, SPACING, strict=True))
    assert piece_extent < 40.0  # the nodule with a stub of vessel, not the vessel
    assert (labels[sl] == label).sum() >= 0.8 * _ball(shape, (20, 20, 20), 4.0).sum()
    assert not (labels == 1).any()  # every voxel now belongs to one of the pieces


def test_compact_mass_is_not_split() -> None:
    shape = (40, 40, 40)
    mask = _ball(shape, (20, 20, 20), 9.0) | _ball(shape, (20, 20, 30), 7.0)  # lobulated 50 mm mass
    labels, box = _only_component(mask)
    pieces = split_sparse_component(labels, box, 1, SPACING)
    assert pieces == [(1, box)]
