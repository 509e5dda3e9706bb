"""Comprehensive 3D SR with a TID 1500 Measurement Report: one measurement group per nodule.

Each nodule is a TID 1411 volumetric ROI group: tracking identifier and UID (the same as its SEG segment),
finding Nodule, finding category, finding sites (lung, lobe when known), the referenced SEG segment,
long/short axis, volume and probability of cancer, the algorithm, and three extra items (TID 1411 is
extensible): the long axis as a 2D POLYLINE on the key CT image (what OHIF draws, labelled with the
measurements), the centre as a SCOORD3D POINT in the CT's frame of reference, and a comment with the
disclaimer. TID 1411 allows only one region representation per group; the SEG segment is that region,
the coordinates mark where to look.

TID 1500's "Qualitative Evaluations" container always states Nodule: Present / Absent with a sentence,
so an SR from a run that found nothing says so ("ran, found nothing"); no SR means "did not run".
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from scipy import ndimage

from node.encode import common, followup, seg
from node.encode.common import CheckedInput
from pipelines.base import CTVolume, Finding, PipelineResult
from pipelines.followup.assessment import FollowUpReport, NoduleReport

PROCEDURE_REPORTED = CodedConcept(value="24627-2", scheme_designator="LN", meaning="CT Chest")
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # (111047, DCM, "Probability of cancer")
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# Outline pixels used to find the long axis on the key slice (pairwise distances: n² memory).
MAX_OUTLINE_POINTS = 1500

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


def finding_comment(finding: Finding, disclaimer: str, label: str = "") -> str:
    parts = [label or f"Nodule {finding.number}"]
    if finding.category is not None:
        parts.append(finding.category.value)
    if finding.lobe:
        parts.append(finding.lobe)
    parts.append(f"detection score {finding.detection_score:.2f}")
    return ", ".join(parts) + f". AI result, {disclaimer}."


def long_axis_endpoints(finding: Finding, spacing_yx: tuple[float, float]) -> npt.NDArray[np.float64]:
    """The two mask pixels farthest apart (in mm) on the key slice, as (column, row) image coordinates.

    SCOORD pixel coordinates put the top-left corner of the top-left pixel at (0, 0), so a pixel's
    centre is at +0.5. The line is the in-plane long axis a radiologist would draw on that slice.
    """
    z = common.key_slice(finding) - finding.box.start[0]
    plane = finding.mask[z]
    interior = ndimage.binary_erosion(plane)
    rows, cols = np.nonzero(plane & ~interior)
    if rows.size > MAX_OUTLINE_POINTS:  # keep the pairwise distances cheap for very large masses
        keep = np.linspace(0, rows.size - 1, MAX_OUTLINE_POINTS).astype(int)
        rows, cols = rows[keep], cols[keep]
    mm = np.stack([rows * spacing_yx[0], cols * spacing_yx[1]], axis=1)
    distances = np.linalg.norm(mm[:, None, :] - mm[None, :, :], axis=2)
    a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)
    _, y0, x0 = finding.box.start
    return np.asarray(
        [[x0 + cols[i] + 0.5, y0 + rows[i] + 0.5] for i in (a, b)],
        dtype=np.float64,
    )


def _long_axis_on_key_image(finding: Finding, volume: CTVolume, checked: CheckedInput) -> hd.sr.ScoordContentItem:
    """A 2D POLYLINE on the key CT image (SELECTED FROM it): what viewers draw as the nodule's measurement."""
    _, dy, dx = volume.geometry.spacing_mm
    z = common.key_slice(finding)
    source = checked.ordered_sources[z]
    item = hd.sr.ScoordContentItem(
        name=codes.SCT.LongAxis,
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=long_axis_endpoints(finding, (dy, dx)),
        pixel_origin_interpretation=hd.sr.PixelOriginInterpretationValues.VOLUME,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    item.ContentSequence = DicomSequence(
        [
            hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                # The key image of a multi-frame source is one of its frames: name it.
                referenced_frame_numbers=checked.referenced_frames(z),
            )
        ]
    )
    return item


def _nodule_group(
    finding: Finding,
    volume: CTVolume,
    result: PipelineResult,
    checked: CheckedInput,
    seg_dataset: pydicom.Dataset,
    segment_number: int,
    identity: tuple[str, str],
    reading: NoduleReport | None,
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
    if reading is not None:
        measurements += followup.group_measurements(reading)
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity[0], identifier=identity[1]),
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
        qualitative_evaluations=followup.group_evaluations(reading) if reading is not None else None,
    )
    content = group[0].ContentSequence
    content.append(_long_axis_on_key_image(finding, volume, checked))
    content.append(
        hd.sr.Scoord3DContentItem(
            name=codes.DCM.Center,
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([finding.centre_mm], dtype=np.float64),
            frame_of_reference_uid=checked.frame_of_reference_uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    content.append(_comment(finding_comment(finding, result.disclaimer, identity[1])))
    if reading is not None:
        content.append(_comment(followup.group_comment(reading)))
    return group


def _placeholder_group() -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=common.derive_uid("placeholder"), identifier="x")
    )


def _qualitative_evaluations(result: PipelineResult, reading: FollowUpReport | None) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container: Nodule Present/Absent and a sentence saying so.

    It sits beside the measurement groups, not among them: OHIF 3.12 takes every measurement group for
    an annotation and its SR viewport crashes on a group without coordinates.
    """
    count = len(result.findings)
    verdict = (
        f"AI lung nodule analysis completed: {count} nodule{'s' if count != 1 else ''} found"
        if count
        else "AI lung nodule analysis completed: no lung nodules found"
    )
    model = f"{common.model_name(result)} {common.algorithm_version(result)}"
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(
                name=codes.SCT.Nodule,
                value=PRESENT if count else ABSENT,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            _comment(f"{verdict} ({model}). {result.disclaimer}."),
            *(followup.exam_items(reading) if reading is not None else []),
        ],
        is_root=False,
        is_sr=True,
    )
    return container


def encode_sr(
    result: PipelineResult,
    volume: CTVolume,
    checked: CheckedInput,
    seg_dataset: pydicom.Dataset | None,
    *,
    uid_seed: str,
    series_number: int,
    previous_reports: Sequence[pydicom.Dataset] = (),
    reading: FollowUpReport | None = None,
) -> hd.sr.Comprehensive3DSR:
    """``reading``: the follow-up reading of this exam (prior, growth, Lung-RADS, Brock), when there is one."""
    identities = followup.nodule_identities(uid_seed, result.findings, reading)
    readings = {n.finding_number: n for n in reading.nodules} if reading is not None else {}
    groups: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    segment_numbers = seg.segment_number_of(result.findings)
    # Each instance once: a multi-frame source holds every slice but is one piece of evidence.
    evidence: list[pydicom.Dataset] = list(checked.instances)
    if result.findings:
        if seg_dataset is None:
            raise ValueError("findings need their SEG to be referenced")  # a programming error, not input
        evidence.append(seg_dataset)
        for finding in result.findings:
            groups.append(
                _nodule_group(
                    finding,
                    volume,
                    result,
                    checked,
                    seg_dataset,
                    segment_numbers[finding.number],
                    identities[finding.number],
                    readings.get(finding.number),
                )
            )
    # highdicom wants at least one measurement group; TID 1500 only wants one of its Imaging
    # Measurements / Qualitative Evaluations containers. Without nodules, build with a placeholder
    # group and drop the Imaging Measurements container: the report then carries only the verdict.
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups or [_placeholder_group()],
    )
    root = report[0].ContentSequence
    if not groups:
        # By index: Sequence.remove() compares items with ==, which matched another item here.
        for index in reversed([k for k, i in enumerate(root) if i.name == codes.DCM.ImagingMeasurements]):
            del root[index]
    root.append(_qualitative_evaluations(result, reading))
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
        series_description=common.series_description("SR", supersedes=bool(previous_reports)),
        previous_versions=list(previous_reports) or None,
        manufacturer_model_name=common.model_name(result),
        software_versions=common.software_versions(result)[0],
        device_serial_number=common.NODE_DEVICE_SERIAL_NUMBER,
    )
    common.finish_header(sr, first, result)
    if reading is not None:
        followup.add_coding_scheme(sr)
    return sr
