"""The DICOM encoders on a real CT series: dciodvfy finds no errors, highdicom reads back the same content.

Judges: dicom3tools dciodvfy (validity), highdicom segread/srread (round trip). The CT is real TCIA data
from ../shared/data; the nodules are spheres drawn into its geometry.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from demo.paths import PHILIPS_CT, SIEMENS_CT
from node.encode import EncodeError, encode_results, write_results
from pipelines.base import CTVolume, Finding, PipelineResult, VoxelBox
from tests.dciodvfy import dciodvfy, judge
from tests.encode_helpers import (
    load_ct,
    read_series,
    result_with,
    sphere_finding,
    two_nodules,
)

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "philips-ct", "dciodvfy")]

# dciodvfy warnings that come from the source CT's own header values, copied unchanged as DICOM requires.
SOURCE_WARNINGS = (
    "Retired Person Name form",  # TCIA's PatientName "C3N-00247" has one component
    "needed to build DICOMDIR - Study ID",  # the source's StudyID is empty (Type 2)
)
# A warning we accept knowingly: General Series Laterality is Type 2C and dciodvfy wants it present in the
# SC (an error when absent), but a chest is unpaired, so the value is empty (dciodvfy then warns).
ACCEPTED_WARNINGS = (*SOURCE_WARNINGS, "attribute <Laterality>")


@dataclass
class Encoded:
    sources: list[pydicom.Dataset]
    volume: CTVolume
    result: PipelineResult
    datasets: list[pydicom.Dataset]
    paths: list[Path]

    def path_of(self, modality: str) -> list[Path]:
        return [p for p, ds in zip(self.paths, self.datasets, strict=True) if ds.Modality == modality]


@pytest.fixture(scope="module")
def siemens() -> tuple[list[pydicom.Dataset], CTVolume]:
    sources = read_series(SIEMENS_CT)
    return sources, load_ct(sources)


@pytest.fixture(scope="module")
def encoded(siemens: tuple[list[pydicom.Dataset], CTVolume], tmp_path_factory: pytest.TempPathFactory) -> Encoded:
    sources, volume = siemens
    result = two_nodules(volume)
    # Pass the sources in reverse file order: the encoder must match them by SOP Instance UID.
    datasets = encode_results(result, volume, list(reversed(sources)), uid_seed="job-42")
    paths = write_results(datasets, tmp_path_factory.mktemp("out"))
    return Encoded(sources, volume, result, datasets, paths)


@pytest.fixture(scope="module")
def encoded_empty(siemens: tuple[list[pydicom.Dataset], CTVolume], tmp_path_factory: pytest.TempPathFactory) -> Encoded:
    sources, volume = siemens
    result = result_with([])
    datasets = encode_results(result, volume, sources, uid_seed="job-43")
    paths = write_results(datasets, tmp_path_factory.mktemp("out-empty"))
    return Encoded(sources, volume, result, datasets, paths)


def _judge(path: Path, label: str) -> None:
    judge(path, label, ACCEPTED_WARNINGS)


# --- validity -----------------------------------------------------------------------------------------
def test_outputs_are_one_seg_one_sr_and_one_sc_per_nodule(encoded: Encoded, encoded_empty: Encoded) -> None:
    assert [ds.Modality for ds in encoded.datasets] == ["SEG", "SR", "OT", "OT"]
    assert [ds.Modality for ds in encoded_empty.datasets] == ["SR"]


@pytest.mark.parametrize("modality", ["SEG", "SR", "OT"])
def test_dciodvfy_finds_no_errors(encoded: Encoded, modality: str) -> None:
    paths = encoded.path_of(modality)
    assert paths
    for i, path in enumerate(paths):
        _judge(path, f"{modality.lower()}-{i + 1}")


def test_dciodvfy_no_nodule_sr(encoded_empty: Encoded) -> None:
    _judge(encoded_empty.paths[0], "sr-no-nodules")


def test_fractional_seg_is_valid_and_reads_back(
    siemens: tuple[list[pydicom.Dataset], CTVolume], tmp_path: Path
) -> None:
    sources, volume = siemens
    result = two_nodules(volume)
    datasets = encode_results(result, volume, sources, uid_seed="job-frac", fractional_seg=True)
    seg_path = write_results(datasets[:1], tmp_path)[0]
    _judge(seg_path, "seg-fractional")
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    stored = seg.pixel_array  # raw stored values, 0..MaximumFractionalValue
    assert stored.max() == round(0.9 * int(seg.MaximumFractionalValue))


# --- SEG round trip -----------------------------------------------------------------------------------
def test_seg_round_trip(encoded: Encoded) -> None:
    seg = hd.seg.segread(encoded.path_of("SEG")[0])
    findings = encoded.result.findings
    assert seg.SegmentationType == "BINARY"
    assert list(seg.get_segment_numbers()) == [1, 2]
    for number, finding in enumerate(findings, start=1):
        description = seg.get_segment_description(number)
        assert description.tracking_id == f"Nodule {finding.number}"
        assert description.segmented_property_type == codes.SCT.Nodule
        assert description.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
        algorithm = description.algorithm_identification
        assert algorithm is not None
        assert algorithm[0].AlgorithmName == "lungnod-test"
        assert algorithm[0].AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        # Orange in viewers (a colour from 0..1 components given as 0..255 would be black).
        colour = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
        np.testing.assert_allclose(colour.to_rgb(), (255, 140, 0), atol=2)
    assert seg.Manufacturer.startswith("AINODE")
    assert seg.StudyInstanceUID == encoded.sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == encoded.sources[0].FrameOfReferenceUID
    # Frames only where a nodule is: one per (slice, segment) with a non-empty mask.
    expected_frames = sum(int(f.mask.any(axis=(1, 2)).sum()) for f in findings)
    assert int(seg.NumberOfFrames) == expected_frames


def test_seg_frames_sit_on_their_source_slices(encoded: Encoded) -> None:
    """Per-frame ImagePositionPatient == the referenced CT slice's, and the pixels are that slice's mask."""
    seg = hd.seg.segread(encoded.path_of("SEG")[0])
    by_uid = {ds.SOPInstanceUID: ds for ds in encoded.sources}
    z_of = {s.sop_instance_uid: z for z, s in enumerate(encoded.volume.slices)}
    frames = seg.pixel_array
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        expected = [float(v) for v in by_uid[source_uid].ImagePositionPatient]
        np.testing.assert_allclose(position, expected, atol=1e-3)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        finding = encoded.result.findings[segment - 1]
        full = finding.full_mask(encoded.volume.shape)[z_of[source_uid]]
        np.testing.assert_array_equal(frames[i].astype(bool), full)


# --- SR round trip ------------------------------------------------------------------------------------
def _comments(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[str]:
    return [str(item.value) for item in group[0].ContentSequence if item.name == codes.DCM.Comment]


def _verdict(sr: hd.sr.Comprehensive3DSR) -> tuple[object, str]:
    """Nodule Present/Absent and the sentence from TID 1500's Qualitative Evaluations container."""
    [container] = [i for i in sr.content[0].ContentSequence if i.name.meaning == "Qualitative Evaluations"]
    [presence] = [i for i in container.ContentSequence if i.name == codes.SCT.Nodule]
    [comment] = [i for i in container.ContentSequence if i.name == codes.DCM.Comment]
    return presence.value, str(comment.value)


def test_sr_round_trip(encoded: Encoded) -> None:
    seg_ds = encoded.datasets[0]
    sr = hd.sr.srread(encoded.path_of("SR")[0])
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    observer = report.get_observer_contexts()[0]
    assert observer.observer_type == codes.DCM.Device
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(encoded.result.findings)
    seg = hd.seg.segread(encoded.path_of("SEG")[0])
    for group, finding in zip(groups, encoded.result.findings, strict=True):
        segment_number = encoded.result.findings.index(finding) + 1
        assert group.tracking_identifier == f"Nodule {finding.number}"
        assert group.tracking_uid == seg.get_segment_description(segment_number).tracking_uid
        assert group.finding_type == codes.SCT.Nodule
        sites = [site.value for site in group.finding_sites]
        assert codes.SCT.Lung in sites
        if finding.lobe == "right upper lobe":
            assert hd.sr.CodedConcept("45653009", "SCT", "Upper lobe of right lung") in sites
        values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["Long axis"] == (pytest.approx(finding.long_axis_mm), "mm")
        assert values["Volume"] == (pytest.approx(finding.volume_mm3), "mm3")
        assert values["Probability of cancer"] == (pytest.approx(finding.malignancy_probability), "1")
        reference = group.referenced_segment
        assert isinstance(reference, hd.sr.ReferencedSegment)
        assert reference.referenced_sop_instance_uid == seg_ds.SOPInstanceUID
        assert reference.referenced_segment_numbers == [segment_number]
        centre = [i for i in group[0].ContentSequence if i.name == codes.DCM.Center]
        assert len(centre) == 1 and centre[0].value_type == hd.sr.ValueTypeValues.SCOORD3D
        np.testing.assert_allclose(centre[0].value[0], finding.centre_mm, atol=1e-3)
        assert centre[0].ReferencedFrameOfReferenceUID == encoded.sources[0].FrameOfReferenceUID
        assert any("NOT FOR DIAGNOSTIC USE" in c for c in _comments(group))
        _check_long_axis_line(group, finding, encoded)
    presence, sentence = _verdict(sr)
    assert presence == codes.SCT.Present
    assert "2 nodules found" in sentence and "NOT FOR DIAGNOSTIC USE" in sentence
    # Every measurement group has coordinates: OHIF 3.12's SR viewport crashes on one without.
    assert report.get_image_measurement_groups() == []


def _check_long_axis_line(
    group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations, finding: Finding, encoded: Encoded
) -> None:
    """The 2D POLYLINE viewers draw: on the key slice, SELECTED FROM it, ends inside the mask."""
    content = group[0].ContentSequence
    [line] = [i for i in content if i.value_type == hd.sr.ValueTypeValues.SCOORD]
    assert line.name == codes.SCT.LongAxis
    assert line.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    [source] = line.ContentSequence
    assert source.RelationshipType == "SELECTED FROM"
    uid = source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    z = next(k for k, s in enumerate(encoded.volume.slices) if s.sop_instance_uid == uid)
    full = finding.full_mask(encoded.volume.shape)[z]
    points = np.asarray(line.value)
    for column, row in points:
        assert full[int(row), int(column)], "long-axis end outside the nodule"
    _, dy, dx = encoded.volume.geometry.spacing_mm
    length = float(np.hypot(*((points[0] - points[1]) * (dx, dy))))
    assert length == pytest.approx(finding.long_axis_mm, rel=0.2)


def test_sr_without_nodules_says_so(encoded_empty: Encoded) -> None:
    sr = hd.sr.srread(encoded_empty.paths[0])
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    assert sr.content.get_image_measurement_groups() == []
    presence, sentence = _verdict(sr)
    assert presence == codes.SCT.Absent
    assert "no lung nodules found" in sentence and "NOT FOR DIAGNOSTIC USE" in sentence
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == encoded_empty.sources[0].StudyInstanceUID


# --- Grad-CAM SC --------------------------------------------------------------------------------------
def test_gradcam_sc(encoded: Encoded) -> None:
    scs = [pydicom.dcmread(p) for p in encoded.path_of("OT")]
    assert len(scs) == len(encoded.result.findings)
    for sc, finding in zip(scs, encoded.result.findings, strict=True):
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert sc.BurnedInAnnotation == "YES"
        assert sc.PhotometricInterpretation == "RGB"
        key_uid = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
        z = next(i for i, s in enumerate(encoded.volume.slices) if s.sop_instance_uid == key_uid)
        assert finding.box.start[0] <= z < finding.box.stop[0]
        pixels = sc.pixel_array.astype(int)
        assert pixels.shape == (*encoded.volume.shape[1:], 3)
        # The heat map colours the nodule: it is not grey there, and the corners away from text are grey.
        cy, cx = (np.asarray(finding.box.start[1:]) + np.asarray(finding.box.stop[1:])) // 2
        centre = pixels[cy, cx]
        assert np.ptp(centre) > 30, f"no heat-map colour at the nodule centre: {centre}"
        assert np.ptp(pixels[encoded.volume.shape[1] // 2, 0]) == 0
        assert "NOT FOR DIAGNOSTIC USE" in sc.ImageComments


# --- common header ------------------------------------------------------------------------------------
def test_common_header(encoded: Encoded) -> None:
    source = encoded.sources[0]
    series_numbers = set()
    for ds in encoded.datasets:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        for attr in ("PatientName", "PatientID", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber"):
            assert str(ds.get(attr)) == str(source.get(attr)), attr
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
        assert ds.Manufacturer.startswith("AINODE")
        assert list(ds.SoftwareVersions) == ["ainode 0.1.0", "lungnod-test 1.2.3"]
        ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer.startswith("AINODE")]
        assert len(ours) == 1
        assert ours[0].PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Equipment"
        assert "lungnod-test" in ours[0].ContributionDescription
        assert ds.SpecificCharacterSet == source.SpecificCharacterSet
        series_numbers.add((ds.Modality, int(ds.SeriesNumber)))
    assert series_numbers == {("SEG", 9001), ("SR", 9002), ("OT", 9003)}


def test_non_ascii_patient_name_survives(tmp_path: Path) -> None:
    sources = read_series(PHILIPS_CT)
    name = "Müller^Renée-Zoë"
    for ds in sources:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = name
    volume = load_ct(sources)
    z, y, x = volume.shape
    result = result_with([sphere_finding(volume, 1, (z // 2, y // 2, x // 3), 7.0)])
    paths = write_results(encode_results(result, volume, sources, uid_seed="charset"), tmp_path)
    assert len(paths) == 3
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == name
        assert name.encode("utf-8") in path.read_bytes()
        assert dciodvfy(path).errors == []


# --- determinism --------------------------------------------------------------------------------------
def _uids(datasets: list[pydicom.Dataset]) -> list[str]:
    """Every UID the encoder made: instances, series (one per object type) and tracking UIDs."""
    uids = [ds.SOPInstanceUID for ds in datasets]
    uids += list(dict.fromkeys(ds.SeriesInstanceUID for ds in datasets))
    for ds in datasets:
        if ds.Modality == "SEG":
            uids += [s.TrackingUID for s in ds.SegmentSequence]
    return uids


def test_uids_derive_from_the_seed(encoded: Encoded) -> None:
    volume, sources, result = encoded.volume, encoded.sources, encoded.result
    again = encode_results(result, volume, sources, uid_seed="job-42")
    other = encode_results(result, volume, sources, uid_seed="job-43")
    assert _uids(again) == _uids(encoded.datasets)
    assert not set(_uids(other)) & set(_uids(encoded.datasets))
    assert len(set(_uids(again))) == len(_uids(again))
    assert all(pydicom.uid.UID(u).is_valid for u in _uids(again))


def test_write_results_is_atomic_and_named_by_uid(encoded: Encoded) -> None:
    folder = encoded.paths[0].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in encoded.datasets)


# --- bad findings -------------------------------------------------------------------------------------
@pytest.fixture()
def small_case(
    siemens: tuple[list[pydicom.Dataset], CTVolume],
) -> Iterator[tuple[list[pydicom.Dataset], CTVolume]]:
    yield siemens


def _expect_error(
    result: PipelineResult,
    volume: CTVolume,
    sources: list[pydicom.Dataset],
    out: Path,
    match: str,
) -> None:
    with pytest.raises(EncodeError, match=match):
        write_results(encode_results(result, volume, sources, uid_seed="bad"), out)
    assert not out.exists() or not any(out.iterdir()), "nothing may be written for bad findings"


def test_mask_off_the_grid(small_case: tuple[list[pydicom.Dataset], CTVolume], tmp_path: Path) -> None:
    sources, volume = small_case
    good = sphere_finding(volume, 1, (50, 256, 256), 6.0)
    z, _y, _x = volume.shape
    box = VoxelBox(start=(z - 2, 250, 250), stop=(z + 3, 260, 260))  # runs past the last slice
    bad = replace(good, box=box, mask=np.ones(box.shape, dtype=bool), gradcam=None, probability_map=None)
    _expect_error(result_with([good, bad]), volume, sources, tmp_path / "out", "off the source grid")


def test_reference_to_a_slice_not_in_the_series(
    small_case: tuple[list[pydicom.Dataset], CTVolume], tmp_path: Path
) -> None:
    sources, volume = small_case
    result = result_with([sphere_finding(volume, 1, (50, 256, 256), 6.0)])
    missing = volume.slices[10].sop_instance_uid
    partial = [ds for ds in sources if ds.SOPInstanceUID != missing]
    _expect_error(result, volume, partial, tmp_path / "out", "not among the source instances")


def test_empty_mask(small_case: tuple[list[pydicom.Dataset], CTVolume], tmp_path: Path) -> None:
    sources, volume = small_case
    finding = sphere_finding(volume, 1, (50, 256, 256), 6.0)
    emptied = copy.copy(finding)
    object.__setattr__(emptied, "mask", np.zeros_like(finding.mask))  # arrays stay mutable after the checks
    _expect_error(result_with([emptied]), volume, sources, tmp_path / "out", "mask is empty")


def test_volume_not_on_the_source_grid(small_case: tuple[list[pydicom.Dataset], CTVolume], tmp_path: Path) -> None:
    sources, volume = small_case
    shifted = replace(volume, geometry=replace(volume.geometry, origin_mm=(0.0, 0.0, 0.0)))
    result = result_with([sphere_finding(volume, 1, (50, 256, 256), 6.0)])
    _expect_error(result, shifted, sources, tmp_path / "out", "volume geometry puts it")


def test_duplicate_finding_numbers(small_case: tuple[list[pydicom.Dataset], CTVolume], tmp_path: Path) -> None:
    sources, volume = small_case
    a = sphere_finding(volume, 1, (50, 256, 256), 6.0)
    b = sphere_finding(volume, 1, (30, 200, 200), 6.0)
    _expect_error(result_with([a, b]), volume, sources, tmp_path / "out", "unique")


def test_not_applicable_gives_no_objects(small_case: tuple[list[pydicom.Dataset], CTVolume]) -> None:
    sources, volume = small_case
    result = PipelineResult.not_applicable("lung-nodules", result_with([]).model, "not a chest CT")
    assert encode_results(result, volume, sources, uid_seed="na") == []


def test_encodes_the_volume_of_the_nodes_loader(siemens: tuple[list[pydicom.Dataset], CTVolume]) -> None:
    """The node's own loader (pipelines.loading) gives a volume the encoder accepts, on the same grid."""
    from pipelines.loading import load_series

    sources, local = siemens
    volume = load_series(sorted(p for p in SIEMENS_CT.iterdir() if p.is_file()))
    assert [s.sop_instance_uid for s in volume.slices] == [s.sop_instance_uid for s in local.slices]
    datasets = encode_results(two_nodules(volume), volume, sources, uid_seed="loader")
    assert [ds.Modality for ds in datasets] == ["SEG", "SR", "OT", "OT"]


def test_superseding_results_name_the_report_they_replace(
    encoded: Encoded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first_sr = next(ds for ds in encoded.datasets if ds.Modality == "SR")
    again = encode_results(
        encoded.result, encoded.volume, encoded.sources, uid_seed="job-42-generation-2", previous_reports=[first_sr]
    )
    paths = write_results(again, tmp_path_factory.mktemp("out-superseding"))
    new_sr = next(ds for ds in again if ds.Modality == "SR")
    predecessors = [
        ref.ReferencedSOPInstanceUID
        for study in new_sr.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
    assert predecessors == [first_sr.SOPInstanceUID]
    assert all("supersedes" in ds.SeriesDescription for ds in again)
    assert new_sr.SOPInstanceUID != first_sr.SOPInstanceUID
    for path, ds in zip(paths, again, strict=True):
        _judge(path, f"superseding-{ds.Modality}-{ds.InstanceNumber}")
