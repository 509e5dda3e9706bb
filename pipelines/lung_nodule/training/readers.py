"""Readers for the datasets users may have: LUNA16 (MetaImage .mhd/.raw + annotations.csv) and LIDC-IDRI
(DICOM series + reader XML). Both give a CTVolume plus nodules in patient millimetres.

Note: the training loop does not consume these yet (it trains on composite data); they are the first step of
`train --luna16/--lidc`, see MODEL_CARD.md.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

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
