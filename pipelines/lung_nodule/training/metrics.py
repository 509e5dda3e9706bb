"""Detection FROC/CPM (LUNA16), Dice, ROC AUC and confusion counts: plain numpy, no plotting.

LUNA16 scoring: a candidate whose centre lies within a reference nodule's radius hits it (the highest-scoring
hit counts, further hits on the same nodule are ignored); a candidate that hits no reference nodule but lies
within an *irrelevant* finding (LUNA16's annotations_excluded: nodules of fewer readers, < 3 mm nodules,
non-nodules) counts neither as a hit nor as a false positive; every other candidate is a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.base import VolumeGeometry

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Candidate:
    scan: int
    score: float
    centre_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Truth:
    scan: int
    centre_mm: tuple[float, float, float]
    radius_mm: float


def truth_of_mask(scan: int, mask: npt.NDArray[np.bool_], geometry: VolumeGeometry) -> Truth:
    """A blended nodule as ground truth: its centroid in patient mm and the radius of a sphere of its volume
    (at least 3 mm, so that the hit rule below stays usable for the smallest nodules)."""
    x, y, z = (float(v) for v in geometry.voxel_to_patient(np.argwhere(mask).mean(axis=0)))
    volume_mm3 = float(mask.sum()) * float(np.prod(geometry.spacing_mm))
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    return Truth(scan, (x, y, z), max(float(radius), 3.0))


def match(candidates: list[Candidate], truths: list[Truth]) -> list[int | None]:
    """Index of the truth each candidate hits (LUNA16: centre within the nodule's radius), else None."""
    out: list[int | None] = []
    for c in candidates:
        hit = None
        best = np.inf
        for i, t in enumerate(truths):
            if t.scan != c.scan:
                continue
            d = float(np.linalg.norm(np.subtract(c.centre_mm, t.centre_mm)))
            if d <= t.radius_mm and d < best:
                hit, best = i, d
        out.append(hit)
    return out


# Radius of an irrelevant finding whose size is unknown (LUNA16's annotations_excluded has -1 for the
# diameter of < 3 mm nodules and non-nodules; its evaluation script takes 10 mm for them).
UNKNOWN_EXCLUDED_DIAMETER_MM = 10.0


def excluded_radius_mm(diameter_mm: float) -> float:
    """Hit radius of an irrelevant finding: half its diameter, or half of 10 mm where the size is unknown."""
    return (diameter_mm if diameter_mm > 0 else UNKNOWN_EXCLUDED_DIAMETER_MM) / 2


def irrelevant_hits(candidates: list[Candidate], truths: list[Truth], irrelevant: Sequence[Truth]) -> list[bool]:
    """Per candidate: it hits no reference nodule but lies within an irrelevant finding (neither hit nor FP)."""
    if not irrelevant:
        return [False] * len(candidates)
    return [
        h is None and x is not None
        for h, x in zip(match(candidates, truths), match(candidates, list(irrelevant)), strict=True)
    ]


def outcomes(candidates: list[Candidate], truths: list[Truth], irrelevant: Sequence[Truth] = ()) -> list[str]:
    """Per candidate "hit" (first, i.e. best-scoring, hit of its nodule), "duplicate" (a further hit),
    "irrelevant" or "fp"."""
    hits = match(candidates, truths)
    ignored = irrelevant_hits(candidates, truths, irrelevant)
    out = ["fp"] * len(candidates)
    found: set[int] = set()
    for i in sorted(range(len(candidates)), key=lambda i: -candidates[i].score):
        h = hits[i]
        if h is not None:
            out[i] = "duplicate" if h in found else "hit"
            found.add(h)
        elif ignored[i]:
            out[i] = "irrelevant"
    return out


def operating_point(
    candidates: list[Candidate],
    truths: list[Truth],
    n_scans: int,
    threshold: float,
    irrelevant: Sequence[Truth] = (),
) -> dict[str, float | int | None]:
    """Sensitivity and false positives per scan of the candidates scoring at least ``threshold``."""
    kept = [c for c in candidates if c.score >= threshold]
    result = outcomes(kept, truths, list(irrelevant))
    hits, fps = result.count("hit"), result.count("fp")
    return {
        "detection_threshold": threshold,
        "sensitivity": hits / len(truths) if truths else None,
        "hits": hits,
        "nodules": len(truths),
        "false_positives": fps,
        "false_positives_per_scan": fps / n_scans if n_scans else None,
        "irrelevant": result.count("irrelevant"),
    }


def froc(
    candidates: list[Candidate],
    truths: list[Truth],
    n_scans: int,
    irrelevant: Sequence[Truth] = (),
) -> tuple[dict[float, float], float, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Sensitivity at each FP rate of FROC_FP_RATES, the CPM (their mean), and the curve (fps/scan, sens).

    Candidates hitting a nodule already found by a higher-scoring candidate are ignored (not FPs), as in
    the LUNA16 evaluation script; so are candidates on an ``irrelevant`` finding that hit no nodule.
    """
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].score)
    hits = match(candidates, truths)
    ignored = irrelevant_hits(candidates, truths, list(irrelevant))
    found: set[int] = set()
    fps = 0
    curve_fp, curve_sens = [0.0], [0.0]
    for i in order:
        h = hits[i]
        if h is None and ignored[i]:
            continue
        if h is None:
            fps += 1
        elif h in found:
            continue
        else:
            found.add(h)
        curve_fp.append(fps / n_scans)
        curve_sens.append(len(found) / max(1, len(truths)))
    fp_arr, sens_arr = np.array(curve_fp), np.array(curve_sens)
    at = {}
    for rate in FROC_FP_RATES:
        ok = fp_arr <= rate
        at[rate] = float(sens_arr[ok].max()) if ok.any() else 0.0
    return at, float(np.mean(list(at.values()))), fp_arr, sens_arr


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN when one class is missing."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def roc_curve(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.r_[np.inf, np.sort(np.unique(s))[::-1]]
    tpr = np.array([(s[y] >= t).mean() if y.any() else 0.0 for t in thresholds])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else 0.0 for t in thresholds])
    return fpr, tpr


def confusion(labels: npt.ArrayLike, predicted: npt.ArrayLike) -> dict[str, float]:
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    tp, fp = int((y & p).sum()), int((~y & p).sum())
    fn, tn = int((y & ~p).sum()), int((~y & ~p).sum())
    recall = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "recall": recall, "precision": precision, "f1": f1}


def recall_first_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike, target_recall: float) -> float:
    """Highest threshold whose recall reaches ``target_recall`` (misses cost more than false alarms)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return 0.5
    for t in np.sort(np.unique(s[y]))[::-1]:
        if (s[y] >= t).mean() >= target_recall:
            return float(t)
    return float(s[y].min())
