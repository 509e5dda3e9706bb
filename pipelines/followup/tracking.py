"""Nodules tracked between two exams of one patient: alignment, matching, growth and status.

Alignment (a documented method, no registration library): the two chests are put on top of each other by
the translation that moves the prior's lung centroid onto the current one (``pipelines.followup.lungs``).
Patients lie differently on the table from one year to the next, and that is mostly a shift; a residual
rotation of 2 degrees moves a nodule 100 mm from the centroid by 3.5 mm, well inside the matching radius.

Matching: each prior nodule's centre, shifted by that translation, is paired with a current nodule by a
minimum-total-distance assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``); a pair farther
apart than ``max(MATCH_RADIUS_MM, the larger long axis)`` is no pair. A current nodule without a pair is
new, a prior one without a pair is resolved.

Growth: volume change, mean-diameter change and the volume doubling time
``VDT = days * ln 2 / ln(V_now / V_prior)`` (Schwartz 1961, as used by NELSON and the BTS guideline).
Status of a matched nodule by volume, the NELSON threshold for a real change beyond measurement error:
grown when the volume rose by at least 25 %, shrunk when it fell by at least 25 %, stable in between. (The
shipped model's volumes of one unchanged nodule differ by up to ~22 % between two scans of it: see
tests/test_followup_orthanc.py.)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipelines.base import NoduleCategory, Vector3

MATCH_RADIUS_MM = 10.0
GROWN_RATIO = 1.25
SHRUNK_RATIO = 0.75


class Status(enum.StrEnum):
    NEW = "new"
    STABLE = "stable"
    GROWN = "grown"
    SHRUNK = "shrunk"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class NoduleMeasurement:
    """One nodule at one time point: what the SR of that exam says of it."""

    centre_mm: Vector3  # patient coordinates of its own exam
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    tracking_uid: str = ""  # the exam's SR Tracking Unique Identifier ("" for a current, not yet encoded one)
    tracking_id: str = ""
    category: NoduleCategory | None = None
    number: int = 0  # the finding number in its own result (current exam), 0 when read from an SR

    @property
    def mean_diameter_mm(self) -> float:
        return (self.long_axis_mm + self.short_axis_mm) / 2.0


@dataclass(frozen=True)
class Growth:
    interval_days: float
    volume_change_mm3: float
    volume_change_fraction: float  # (V_now - V_prior) / V_prior
    diameter_change_mm: float  # mean diameter, now - prior
    doubling_time_days: float | None  # None when the volume did not change; negative when it shrank


@dataclass(frozen=True)
class TrackedNodule:
    status: Status
    current: NoduleMeasurement | None  # None when resolved
    prior: NoduleMeasurement | None  # None when new
    growth: Growth | None  # for matched nodules only
    distance_mm: float | None = None  # between the aligned centres of a matched pair


def doubling_time_days(prior_mm3: float, current_mm3: float, interval_days: float) -> float | None:
    """Volume doubling time in days (negative: a halving time); None when the volume is unchanged."""
    if prior_mm3 <= 0 or current_mm3 <= 0:
        raise ValueError("volumes must be positive")
    if interval_days <= 0:
        raise ValueError(f"the prior must be older than the current exam, interval {interval_days} days")
    ratio = current_mm3 / prior_mm3
    if math.isclose(ratio, 1.0, rel_tol=1e-9):
        return None
    return interval_days * math.log(2.0) / math.log(ratio)


def growth(prior: NoduleMeasurement, current: NoduleMeasurement, interval_days: float) -> Growth:
    return Growth(
        interval_days=interval_days,
        volume_change_mm3=current.volume_mm3 - prior.volume_mm3,
        volume_change_fraction=(current.volume_mm3 - prior.volume_mm3) / prior.volume_mm3,
        diameter_change_mm=current.mean_diameter_mm - prior.mean_diameter_mm,
        doubling_time_days=doubling_time_days(prior.volume_mm3, current.volume_mm3, interval_days),
    )


def status_of(g: Growth) -> Status:
    ratio = 1.0 + g.volume_change_fraction
    if ratio >= GROWN_RATIO:
        return Status.GROWN
    if ratio <= SHRUNK_RATIO:
        return Status.SHRUNK
    return Status.STABLE


def track(
    prior: list[NoduleMeasurement],
    current: list[NoduleMeasurement],
    *,
    interval_days: float,
    shift_mm: Vector3 = (0.0, 0.0, 0.0),
) -> list[TrackedNodule]:
    """Pair the prior's nodules with the current ones; ``shift_mm`` moves prior coordinates onto current ones.

    The result lists the current nodules in their order (matched or new), then the resolved prior ones.
    """
    shift = np.asarray(shift_mm, dtype=np.float64)
    pairs: dict[int, tuple[int, float]] = {}  # current index -> (prior index, distance)
    if prior and current:
        p = np.asarray([n.centre_mm for n in prior], dtype=np.float64) + shift
        c = np.asarray([n.centre_mm for n in current], dtype=np.float64)
        distances = np.linalg.norm(c[:, None, :] - p[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(distances)
        for ci, pi in zip(rows.tolist(), cols.tolist(), strict=True):
            radius = max(MATCH_RADIUS_MM, current[ci].long_axis_mm, prior[pi].long_axis_mm)
            if distances[ci, pi] <= radius:
                pairs[ci] = (pi, float(distances[ci, pi]))
    tracked: list[TrackedNodule] = []
    for ci, now in enumerate(current):
        if ci not in pairs:
            tracked.append(TrackedNodule(Status.NEW, now, None, None))
            continue
        pi, distance = pairs[ci]
        g = growth(prior[pi], now, interval_days)
        tracked.append(TrackedNodule(status_of(g), now, prior[pi], g, distance))
    matched_prior = {pi for pi, _ in pairs.values()}
    tracked += [TrackedNodule(Status.RESOLVED, None, n, None) for i, n in enumerate(prior) if i not in matched_prior]
    return tracked


def fastest_doubling_time_days(tracked: list[TrackedNodule]) -> float | None:
    """The shortest positive doubling time among the growing nodules (the worklist's column)."""
    times = [
        t.growth.doubling_time_days
        for t in tracked
        if t.growth is not None and t.growth.doubling_time_days is not None and t.growth.doubling_time_days > 0
    ]
    return min(times) if times else None
