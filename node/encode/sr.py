"""Comprehensive 3D SR with a TID 1500 Measurement Report: one measurement group per nodule.

Each nodule is a TID 1411 volumetric ROI group: tracking identifier and UID (the same as its SEG segment),
finding Nodule, finding category, finding sites (lung, lobe when known), the referenced SEG segment,
long/short axis, volume and probability of cancer, the algorithm, and two extra items (TID 1411 is
extensible): the centre as a SCOORD3D POINT in the CT's frame of reference, and a comment with the
disclaimer. TID 1411 allows only one region representation per group, so the SEG segment is the
outline and the SCOORD3D point marks the centre.

A TID 1501 group "AI lung nodule analysis" is always present and states Nodule: Present / Absent, so
an SR from a run that found nothing says so ("ran, found nothing"); no SR means "did not run".
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from node.encode import common, seg
from node.encode.common import CheckedInput
from pipelines.base import Finding, PipelineResult

PROCEDURE_REPORTED = CodedConcept(value="24627-2", scheme_designator="LN", meaning="CT Chest")
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # (111047, DCM, "Probability of cancer")
PRESENCE = codes.DCM.PresenceOfProperty
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
SUMMARY_TRACKING_ID = "AI lung nodule analysis"

# Lobe names the pipelines may give -> SNOMED CT lobe concepts.
_RUL = CodedConcept("45653009", "SCT", "Upper lobe of right lung")
_RML = CodedConcept("72481006", "SCT", "Middle lobe of right lung")
_RLL = CodedConcept("266005", "SCT", "Lower lobe of right lung")
_LUL = CodedConcept("44714003", "SCT", "Upper lobe of left lung")
_LLL = CodedConcept("90572001", "SCT", "Lower lobe of left lung")
LOBE_CODES: dict[str, CodedConcept] = {
    "right upper lobe": _RUL, "rul": _RUL,
    "right middle lobe": _RML, "rml": _RML,
    "right lower lobe": _RLL, "rll": _RLL,
    "left upper lobe": _LUL, "lul": _LUL,
    "left lower lobe": _LLL, "lll": _LLL,
}  # fmt: skip


def lobe_code(lobe: str | None) -> CodedConcept | None:
    if not lobe:
        return None
    return LOBE_CODES.get(" ".join(lobe.lower().replace("_", " ").split()))


def _algorithm(result: PipelineResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=common.model_name(result),
        version=common.algorithm_version(result),
        family=common.ALGORITHM_FAMILY,
    )


def _observation_context(result: PipelineResult) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=common.NODE_DEVICE_OBSERVER_UID,
        name="AINODE",
        manufacturer_name=common.NODE_MANUFACTURER,
        model_name=common.model_name(result),
        serial_number=common.NODE_DEVICE_SERIAL_NUMBER,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def finding_comment(finding: Finding, disclaimer: str) -> str:
    parts = [f"Nodule {finding.number}"]
    if finding.category is not None:
        parts.append(finding.category.value)
    if finding.lobe:
        parts.append(finding.lobe)
    parts.append(f"detection score {finding.detection_score:.2f}")
    return ", ".join(parts) + f". AI result, {disclaimer}."


def _nodule_group(
    finding: Finding,
    result: PipelineResult,
    checked: CheckedInput,
    seg_dataset: pydicom.Dataset,
    segment_number: int,
    uid_seed: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    sites = [hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)]
    lobe = lobe_code(finding.lobe)
    if lobe is not None:
        sites.append(hd.sr.FindingSite(anatomic_location=lobe))
    mm = codes.UCUM.Millimeter
    measurements = [
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(finding.long_axis_mm), unit=mm),
        hd.sr.Measurement(name=codes.SCT.ShortAxis, value=float(finding.short_axis_mm), unit=mm),
        hd.sr.Measurement(name=codes.SCT.Volume, value=float(finding.volume_mm3), unit=codes.UCUM.CubicMillimeter),
        hd.sr.Measurement(
            name=PROBABILITY_OF_CANCER,
            value=float(finding.malignancy_probability),
            unit=codes.UCUM.NoUnits,
            algorithm_id=_algorithm(result),
        ),
    ]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=seg.tracking_uid(uid_seed, finding), identifier=seg.tracking_id(finding)
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg_dataset.SOPClassUID),
            sop_instance_uid=str(seg_dataset.SOPInstanceUID),
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(checked.series_instance_uid),
        ),
        finding_type=codes.SCT.Nodule,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_id=_algorithm(result),
        finding_sites=sites,
        measurements=measurements,
    )
    content = group[0].ContentSequence
    content.append(
        hd.sr.Scoord3DContentItem(
            name=codes.DCM.Center,
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([finding.centre_mm], dtype=np.float64),
            frame_of_reference_uid=checked.frame_of_reference_uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    content.append(_comment(finding_comment(finding, result.disclaimer)))
    return group


def _summary_group(result: PipelineResult, uid_seed: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    count = len(result.findings)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=common.derive_uid(uid_seed, "sr-summary"), identifier=SUMMARY_TRACKING_ID
        ),
        finding_type=codes.SCT.Nodule,
        algorithm_id=_algorithm(result),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=PRESENCE, value=PRESENT if count else ABSENT),
        ],
    )
    verdict = (
        f"AI lung nodule analysis completed: {count} nodule{'s' if count != 1 else ''} found."
        if count
        else "AI lung nodule analysis completed: no lung nodules found."
    )
    group[0].ContentSequence.append(_comment(f"{verdict} {result.disclaimer}."))
    return group


def encode_sr(
    result: PipelineResult,
    checked: CheckedInput,
    seg_dataset: pydicom.Dataset | None,
    *,
    uid_seed: str,
    series_number: int,
) -> hd.sr.Comprehensive3DSR:
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_summary_group(result, uid_seed)]
    segment_numbers = seg.segment_number_of(result.findings)
    evidence: list[pydicom.Dataset] = list(checked.ordered_sources)
    if result.findings:
        if seg_dataset is None:
            raise ValueError("findings need their SEG to be referenced")  # a programming error, not input
        evidence.append(seg_dataset)
        for finding in result.findings:
            groups.append(
                _nodule_group(finding, result, checked, seg_dataset, segment_numbers[finding.number], uid_seed)
            )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    first: pydicom.Dataset = checked.ordered_sources[0]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=common.derive_uid(uid_seed, "sr-series"),
        series_number=series_number,
        sop_instance_uid=common.derive_uid(uid_seed, "sr-instance"),
        instance_number=1,
        manufacturer=common.NODE_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: no human has checked the AI's output
        contributing_equipment=common.equipment(result),
        series_description=common.series_description("SR"),
        manufacturer_model_name=common.model_name(result),
        software_versions=common.software_versions(result)[0],
        device_serial_number=common.NODE_DEVICE_SERIAL_NUMBER,
    )
    common.finish_header(sr, first, result)
    return sr


def nodule_groups(report_groups: Sequence[object]) -> list[object]:
    """Helper for readers: the volumetric (per-nodule) groups of a parsed report."""
    return [g for g in report_groups if isinstance(g, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)]
