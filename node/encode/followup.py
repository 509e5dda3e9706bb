"""The follow-up reading in the TID 1500 SR, and the nodules of an earlier SR read back.

For a nodule seen before, the SR's measurement group (and the SEG segment) carries the prior's Tracking
Identifier and Tracking Unique Identifier, so a viewer or a registry links the two time points. The group
also holds the prior's measurements, the growth (volume change, mean-diameter change, volume doubling time),
the temporal status, the nodule's Lung-RADS v2022 category with the rule, and its Brock (PanCan) risk with
the unknown inputs named; the exam-level container states the comparison (or why there was none), the exam's
Lung-RADS category (a suggestion) and the nodules of the prior no longer seen.

DICOM has no standard concepts for most of these; they are coded in the node's own scheme ``99AINODE``
(PS3.16 8.2: a private scheme starts with "99"), declared in the SR's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from node.encode import common
from pipelines.base import Finding
from pipelines.followup import brock, lungrads
from pipelines.followup.assessment import FollowUpReport, NoduleReport, PriorOutcome
from pipelines.followup.tracking import NoduleMeasurement, Status

SCHEME = "99AINODE"


def _code(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


PRIOR_LONG_AXIS = _code("F001", "Long axis at prior exam")
PRIOR_VOLUME = _code("F002", "Volume at prior exam")
VOLUME_CHANGE = _code("F003", "Volume change since prior exam")
DIAMETER_CHANGE = _code("F004", "Mean diameter change since prior exam")
DOUBLING_TIME = _code("F005", "Volume doubling time")
INTERVAL = _code("F006", "Interval since prior exam")
BROCK_RISK = _code("F010", "Brock (PanCan) probability of malignancy")
TEMPORAL_STATUS = _code("F020", "Change since prior exam")
LUNG_RADS = _code("F030", "Lung-RADS v2022 category (suggestion)")
LUNG_RADS_RULE = _code("F031", "Lung-RADS rule applied")
COMPARISON = _code("F040", "Comparison with prior exam")
STATUS_CODES = {status: _code(f"S-{status.value}", status.value) for status in Status}
CATEGORY_CODES = {c: _code(f"LR-{c.value}", f"Lung-RADS {c.value}") for c in lungrads.Category}
DAYS = CodedConcept("d", "UCUM", "day")
PERCENT = CodedConcept("%", "UCUM", "percent")

BROCK_ALGORITHM = hd.sr.AlgorithmIdentification(name="Brock PanCan model 2b", version="McWilliams NEJM 2013")


def coding_scheme_identification() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "AINODE follow-up reading concepts"
    item.CodingSchemeResponsibleOrganization = common.NODE_MANUFACTURER
    return item


def add_coding_scheme(sr: pydicom.Dataset) -> None:
    schemes = list(sr.get("CodingSchemeIdentificationSequence", []))
    schemes.append(coding_scheme_identification())
    sr.CodingSchemeIdentificationSequence = DicomSequence(schemes)


def nodule_identities(
    uid_seed: str, findings: Sequence[Finding], report: FollowUpReport | None
) -> dict[int, tuple[str, str]]:
    """Finding number -> (Tracking UID, Tracking Identifier): the prior's for a nodule seen before.

    A new nodule gets a derived UID and the first "Nodule N" that the prior did not use, so two different
    nodules never share an identifier across the time points.
    """
    matched: dict[int, tuple[str, str]] = {}
    used: set[str] = set()
    if report is not None:
        for n in report.nodules:
            prior = n.tracked.prior if n.tracked is not None else None
            if prior is not None and prior.tracking_uid:
                matched[n.finding_number] = (prior.tracking_uid, prior.tracking_id or f"Nodule {n.finding_number}")
        used = {t.prior.tracking_id for t in report.resolved if t.prior is not None} | {i for _, i in matched.values()}
    out: dict[int, tuple[str, str]] = {}
    for finding in findings:
        if finding.number in matched:
            out[finding.number] = matched[finding.number]
            continue
        k = finding.number
        while f"Nodule {k}" in used:
            k += 1
        used.add(f"Nodule {k}")
        out[finding.number] = (common.derive_uid(uid_seed, "nodule", str(finding.number)), f"Nodule {k}")
    return out


def group_measurements(nodule: NoduleReport) -> list[hd.sr.Measurement]:
    """The prior's size, the growth and the Brock risk of one nodule (TID 1419 measurements)."""
    mm = codes.UCUM.Millimeter
    out: list[hd.sr.Measurement] = []
    tracked = nodule.tracked
    if tracked is not None and tracked.prior is not None and tracked.growth is not None:
        g = tracked.growth
        out += [
            hd.sr.Measurement(name=PRIOR_LONG_AXIS, value=float(tracked.prior.long_axis_mm), unit=mm),
            hd.sr.Measurement(
                name=PRIOR_VOLUME, value=float(tracked.prior.volume_mm3), unit=codes.UCUM.CubicMillimeter
            ),
            hd.sr.Measurement(name=VOLUME_CHANGE, value=100.0 * g.volume_change_fraction, unit=PERCENT),
            hd.sr.Measurement(name=DIAMETER_CHANGE, value=float(g.diameter_change_mm), unit=mm),
            hd.sr.Measurement(name=INTERVAL, value=float(g.interval_days), unit=DAYS),
        ]
        if g.doubling_time_days is not None:
            out.append(hd.sr.Measurement(name=DOUBLING_TIME, value=float(g.doubling_time_days), unit=DAYS))
    if nodule.brock.risk is not None:
        out.append(
            hd.sr.Measurement(
                name=BROCK_RISK, value=float(nodule.brock.risk), unit=codes.UCUM.NoUnits, algorithm_id=BROCK_ALGORITHM
            )
        )
    return out


def group_evaluations(nodule: NoduleReport) -> list[hd.sr.QualitativeEvaluation]:
    out = [hd.sr.QualitativeEvaluation(name=LUNG_RADS, value=CATEGORY_CODES[nodule.lungrads_category])]
    if nodule.status is not None:
        out.insert(0, hd.sr.QualitativeEvaluation(name=TEMPORAL_STATUS, value=STATUS_CODES[nodule.status]))
    return out


def group_comment(nodule: NoduleReport) -> str:
    """One sentence per nodule a reader can check: status and growth, Lung-RADS rule, Brock risk."""
    parts = []
    t = nodule.tracked
    if t is not None and t.growth is not None:
        g = t.growth
        vdt = f", volume doubling time {g.doubling_time_days:.0f} days" if g.doubling_time_days is not None else ""
        parts.append(
            f"{t.status.value} since the prior ({g.interval_days:.0f} days): volume "
            f"{100 * g.volume_change_fraction:+.0f} %, mean diameter {g.diameter_change_mm:+.1f} mm{vdt}"
        )
    elif t is not None:
        parts.append(f"{t.status.value}: not seen on the prior")
    parts.append(f"Lung-RADS {nodule.lungrads_category.value} (suggestion): {nodule.lungrads_rule}")
    parts.append(nodule.brock.describe() + f" [{brock.CITATION}]")
    return ". ".join(parts) + "."


def _text(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def exam_items(report: FollowUpReport) -> list[hd.sr.ContentItem]:
    """For the exam's Qualitative Evaluations container: the comparison, the Lung-RADS category and rule."""
    comparison = report.prior.statement
    if report.prior.outcome is PriorOutcome.COMPARED and report.prior.prior is not None:
        p = report.prior.prior
        comparison = (
            f"compared with the prior CT of {p.study_date.isoformat()} ({report.interval_days:.0f} days earlier; "
            f"{p.source}): {report.count(Status.NEW)} new, {report.count(Status.GROWN)} grown, "
            f"{report.count(Status.STABLE)} stable, {report.count(Status.SHRUNK)} shrunk, "
            f"{report.count(Status.RESOLVED)} resolved"
        )
    items: list[hd.sr.ContentItem] = [
        _text(COMPARISON, comparison),
        hd.sr.CodeContentItem(
            name=LUNG_RADS,
            value=CATEGORY_CODES[report.lungrads.category],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
        _text(LUNG_RADS_RULE, report.lungrads.describe()),
    ]
    for t in report.resolved:
        assert t.prior is not None  # resolved nodules are prior ones
        items.append(
            _text(
                TEMPORAL_STATUS,
                f"{t.prior.tracking_id or 'a nodule'} of the prior (Tracking UID {t.prior.tracking_uid}, "
                f"long axis {t.prior.long_axis_mm:.1f} mm) is not seen any more: resolved",
            )
        )
    return items


def prior_nodules(sr: pydicom.Dataset) -> list[NoduleMeasurement]:
    """The nodules of an earlier TID 1500 SR of this node: tracking identity, size and centre."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True).content
    if not isinstance(report, hd.sr.MeasurementReport):
        return []
    out = []
    for group in report.get_volumetric_roi_measurement_groups():
        values = {m.name: float(m.value) for m in group.get_measurements()}
        centres = [i for i in group[0].ContentSequence if i.name == codes.DCM.Center]
        if not centres or codes.SCT.LongAxis not in values or codes.SCT.Volume not in values:
            continue  # not one of the node's nodule groups
        x, y, z = (float(v) for v in centres[0].value[0])
        out.append(
            NoduleMeasurement(
                centre_mm=(x, y, z),
                long_axis_mm=values[codes.SCT.LongAxis],
                short_axis_mm=values.get(codes.SCT.ShortAxis, values[codes.SCT.LongAxis]),
                volume_mm3=values[codes.SCT.Volume],
                tracking_uid=str(group.tracking_uid),
                tracking_id=str(group.tracking_identifier),
            )
        )
    return out
