"""One exam's follow-up reading: the prior (or why there is none), each nodule tracked, its Brock risk,
and the exam's Lung-RADS category. Pure: the node finds the prior and the patient facts, this decides.

What a report says about its prior is one of :class:`PriorOutcome`; whatever it is, the current exam is
still reported (baseline rules without a prior, Lung-RADS 0 when a prior exists but could not be read).
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.base import Finding, Vector3
from pipelines.followup import brock, lungrads, tracking
from pipelines.followup.brock import BrockInputs, BrockRisk
from pipelines.followup.lungrads import Temporal
from pipelines.followup.lungs import EMPHYSEMA_FRACTION
from pipelines.followup.tracking import NoduleMeasurement, Status, TrackedNodule


class PriorOutcome(enum.StrEnum):
    COMPARED = "compared"
    NONE_FOUND = "none-found"  # no earlier CT of this patient in the look-back window
    OTHER_BODY_PART = "other-body-part"  # earlier CT found, none of the chest
    NOT_RETRIEVED = "not-retrieved"  # an earlier chest CT exists but could not be retrieved or read
    DISABLED = "disabled"  # follow-up reading is off in the config


@dataclass(frozen=True)
class PriorExam:
    study_instance_uid: str
    study_date: datetime.date
    nodules: tuple[NoduleMeasurement, ...]
    lung_centroid_mm: Vector3 | None
    source: str  # in words: "the node's own earlier result", "retrieved by C-GET and analysed"...
    sr_sop_instance_uid: str = ""  # the prior's SR, when it has one


@dataclass(frozen=True)
class PriorSearch:
    outcome: PriorOutcome
    statement: str  # what the report says about the prior, in words
    prior: PriorExam | None = None

    def __post_init__(self) -> None:
        if (self.outcome is PriorOutcome.COMPARED) != (self.prior is not None):
            raise ValueError("a prior exam goes with outcome COMPARED, and only with it")


@dataclass(frozen=True)
class PatientContext:
    age_years: float | None
    female: bool | None


_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def parse_dicom_date(value: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def patient_context(*, patient_age: str, patient_sex: str, birth_date: str, study_date: str) -> PatientContext:
    """Age and sex from DICOM header strings: PatientAge (AS, "065Y"), else birth date and study date."""
    age: float | None = None
    match = _AGE.match(patient_age.strip())
    if match:
        age = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    else:
        born, seen = parse_dicom_date(birth_date), parse_dicom_date(study_date)
        if born is not None and seen is not None and seen > born:
            age = (seen - born).days / 365.25
    sex = patient_sex.strip().upper()
    return PatientContext(age_years=age, female=True if sex == "F" else False if sex == "M" else None)


@dataclass(frozen=True)
class NoduleReport:
    finding_number: int
    tracked: TrackedNodule | None  # None when no prior was compared (a baseline exam)
    brock: BrockRisk
    lungrads_category: lungrads.Category
    lungrads_rule: str

    @property
    def status(self) -> Status | None:
        return self.tracked.status if self.tracked is not None else None


@dataclass(frozen=True)
class FollowUpReport:
    prior: PriorSearch
    nodules: tuple[NoduleReport, ...]  # one per current finding, in the findings' order
    resolved: tuple[TrackedNodule, ...]  # prior nodules not seen any more
    lungrads: lungrads.Assessment
    emphysema_fraction: float | None
    interval_days: float | None

    def count(self, status: Status) -> int:
        return sum(1 for n in self.nodules if n.status is status) + (
            len(self.resolved) if status is Status.RESOLVED else 0
        )

    @property
    def fastest_doubling_time_days(self) -> float | None:
        return tracking.fastest_doubling_time_days([n.tracked for n in self.nodules if n.tracked is not None])

    def summary(self) -> dict[str, object]:
        """JSON-friendly: what the job summary keeps and the worklist shows."""
        vdt = self.fastest_doubling_time_days
        return {
            "prior": {
                "outcome": self.prior.outcome.value,
                "statement": self.prior.statement,
                "study_uid": self.prior.prior.study_instance_uid if self.prior.prior else None,
                "study_date": self.prior.prior.study_date.isoformat() if self.prior.prior else None,
            },
            "interval_days": self.interval_days,
            "counts": {status.value: self.count(status) for status in Status},
            "fastest_doubling_time_days": None if vdt is None else round(vdt, 1),
            "lung_rads": {"category": self.lungrads.category.value, "rule": self.lungrads.rule, "suggestion": True},
            "emphysema_fraction": None if self.emphysema_fraction is None else round(self.emphysema_fraction, 4),
            "nodules": [
                {
                    "number": n.finding_number,
                    "status": n.status.value if n.status else None,
                    "doubling_time_days": (
                        None
                        if n.tracked is None or n.tracked.growth is None or n.tracked.growth.doubling_time_days is None
                        else round(n.tracked.growth.doubling_time_days, 1)
                    ),
                    "lung_rads": n.lungrads_category.value,
                    "brock_risk": None if n.brock.risk is None else round(n.brock.risk, 4),
                    "brock_unknown": list(n.brock.unknown),
                }
                for n in self.nodules
            ],
        }


def measurement_of(finding: Finding) -> NoduleMeasurement:
    return NoduleMeasurement(
        centre_mm=finding.centre_mm,
        long_axis_mm=finding.long_axis_mm,
        short_axis_mm=finding.short_axis_mm,
        volume_mm3=finding.volume_mm3,
        category=finding.category,
        number=finding.number,
    )


def upper_lobe(finding: Finding) -> bool | None:
    """From the lobe the pipeline named; None (unknown) when it named none."""
    if not finding.lobe:
        return None
    return "upper" in finding.lobe.lower() or finding.lobe.lower() in ("rul", "lul")


def _temporal(tracked: TrackedNodule | None) -> Temporal:
    if tracked is None:
        return Temporal.BASELINE
    if tracked.status is Status.NEW or tracked.growth is None:
        return Temporal.NEW
    # Lung-RADS' own growth rule (mean diameter), not the volumetric status.
    return Temporal.GROWING if tracked.growth.diameter_change_mm > lungrads.GROWTH_MM else Temporal.STABLE


def assess_exam(
    findings: Sequence[Finding],
    *,
    study_date: datetime.date | None,
    lung_centroid_mm: Vector3 | None,
    emphysema_fraction: float | None,
    patient: PatientContext,
    prior: PriorSearch,
) -> FollowUpReport:
    current = [measurement_of(f) for f in findings]
    tracked: list[TrackedNodule | None] = [None] * len(current)
    resolved: list[TrackedNodule] = []
    interval: float | None = None
    search = prior
    if prior.prior is not None:
        if study_date is None or study_date <= prior.prior.study_date:
            search = PriorSearch(PriorOutcome.NOT_RETRIEVED, "the prior's study date is not before this exam's")
        else:
            interval = float((study_date - prior.prior.study_date).days)
            shift: Vector3 = (0.0, 0.0, 0.0)
            if lung_centroid_mm is not None and prior.prior.lung_centroid_mm is not None:
                delta = np.asarray(lung_centroid_mm) - np.asarray(prior.prior.lung_centroid_mm)
                shift = (float(delta[0]), float(delta[1]), float(delta[2]))
            result = tracking.track(list(prior.prior.nodules), current, interval_days=interval, shift_mm=shift)
            tracked = list(result[: len(current)])
            resolved = result[len(current) :]
    emphysema = None if emphysema_fraction is None else emphysema_fraction >= EMPHYSEMA_FRACTION
    nodules: list[NoduleReport] = []
    for finding, measured, track in zip(findings, current, tracked, strict=True):
        risk = brock.brock_risk(
            BrockInputs(
                diameter_mm=finding.long_axis_mm,
                nodule_type=finding.category,
                nodule_count=len(findings),
                age_years=patient.age_years,
                female=patient.female,
                emphysema=emphysema,
                upper_lobe=upper_lobe(finding),
            )
        )
        diameter = lungrads.mean_diameter(measured.long_axis_mm, measured.short_axis_mm)
        category, rule = lungrads.nodule_category(
            lungrads.NoduleInput(diameter, finding.category, _temporal(track), f"nodule {finding.number}")
        )
        nodules.append(NoduleReport(finding.number, track, risk, category, rule))
    exam = lungrads.assess(
        [
            lungrads.NoduleInput(
                lungrads.mean_diameter(m.long_axis_mm, m.short_axis_mm), m.category, _temporal(t), f"nodule {m.number}"
            )
            for m, t in zip(current, tracked, strict=True)
        ],
        prior_unavailable=search.outcome is PriorOutcome.NOT_RETRIEVED,
    )
    return FollowUpReport(search, tuple(nodules), tuple(resolved), exam, emphysema_fraction, interval)
