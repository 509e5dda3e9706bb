"""The encoders on a multi-frame CT source (one Legacy Converted Enhanced CT instance).

The multi-frame image is made by highdicom from a generated single-frame series written in shuffled
order, so frame numbers differ from volume slice indices: a reference that used the slice index, or
assumed frame i is slice i, points at the wrong frame and fails here. Judges: dciodvfy (validity),
highdicom segread/srread (frame references read back), the SC's pixels against the source frame's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.sr.codedict import codes

from demo.ct_factory import prepare_for_highdicom_legacy, write_series
from node.encode import EncodeError, encode_results, write_results
from node.encode.common import key_slice
from node.encode.gradcam_sc import lung_window
from pipelines.base import CTVolume, PipelineResult, SourceSlice
from pipelines.loading import load_series
from tests.dciodvfy import judge
from tests.encode_helpers import result_with, sphere_finding

pytestmark = [pytest.mark.peers, pytest.mark.needs("dciodvfy")]

N_SLICES = 24
SIZE = 128
# Written in this order, so the multi-frame image's frame k is not volume slice k.
SHUFFLE_SEED = 7
# Only the SC's empty Laterality (General Series, Type 2C; a chest is unpaired), as for single-frame sources
# (see tests/test_encode_objects.py); the generated series has a two-component PatientName and a StudyID.
ACCEPTED_WARNINGS = ("attribute <Laterality>",)


def phantom() -> npt.NDArray[np.int16]:
    """Slice k is filled with its own HU value (inside the lung window), so each frame's pixels name it."""
    hu = np.zeros((N_SLICES, SIZE, SIZE), dtype=np.int16)
    for k in range(N_SLICES):
        hu[k] = -1000 + 40 * k
    return hu


def single_frame_series(folder: Path) -> list[pydicom.Dataset]:
    paths = write_series(folder, phantom())
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(paths))
    singles = [pydicom.dcmread(paths[int(i)]) for i in order]
    for ds in singles:
        prepare_for_highdicom_legacy(ds)
    return singles


def to_multiframe(singles: list[pydicom.Dataset], path: Path, series_uid: str | None = None) -> pydicom.Dataset:
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=singles,
        series_instance_uid=series_uid or pydicom.uid.generate_uid(),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(path)
    return pydicom.dcmread(path)


def frame_hu(multiframe: pydicom.Dataset, frame_number: int) -> npt.NDArray[np.float32]:
    """HU of one frame (1-based), read straight from the multi-frame pixel data."""
    transform = multiframe.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    stored = multiframe.pixel_array[frame_number - 1].astype(np.float32)
    return stored * float(transform.RescaleSlope) + float(transform.RescaleIntercept)


def frame_position(multiframe: pydicom.Dataset, frame_number: int) -> list[float]:
    item = multiframe.PerFrameFunctionalGroupsSequence[frame_number - 1]
    return [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]


@dataclass
class Encoded:
    multiframe: pydicom.Dataset
    volume: CTVolume
    result: PipelineResult
    datasets: list[pydicom.Dataset]
    paths: list[Path]

    def path_of(self, modality: str) -> list[Path]:
        return [p for p, ds in zip(self.paths, self.datasets, strict=True) if ds.Modality == modality]

    def frame_of(self, z: int) -> int:
        frame = self.volume.slices[z].frame_number
        assert frame is not None
        return frame


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Encoded:
    root = tmp_path_factory.mktemp("multiframe")
    multiframe = to_multiframe(single_frame_series(root / "single"), root / "multi" / "enhanced.dcm")
    volume = load_series([root / "multi" / "enhanced.dcm"])  # the node's own loader
    result = result_with(
        [
            sphere_finding(volume, 1, (6, 50, 40), 5.0, probability=0.7),
            sphere_finding(volume, 2, (16, 70, 90), 4.0, probability=0.2, lobe=None),
        ]
    )
    datasets = encode_results(result, volume, [multiframe], uid_seed="multiframe-job")
    paths = write_results(datasets, root / "out")
    return Encoded(multiframe, volume, result, datasets, paths)


def test_the_fixture_frames_are_not_in_volume_order(encoded: Encoded) -> None:
    """Guards the test's power: with frame k == slice k+1 a wrong frame reference could go unnoticed."""
    frames = [encoded.frame_of(z) for z in range(N_SLICES)]
    assert sorted(frames) == list(range(1, N_SLICES + 1))
    assert frames != list(range(1, N_SLICES + 1))
    assert str(encoded.multiframe.SOPClassUID) == pydicom.uid.LegacyConvertedEnhancedCTImageStorage


def test_outputs(encoded: Encoded) -> None:
    assert [ds.Modality for ds in encoded.datasets] == ["SEG", "SR", "OT", "OT"]


@pytest.mark.parametrize("modality", ["SEG", "SR", "OT"])
def test_dciodvfy_finds_no_errors(encoded: Encoded, modality: str) -> None:
    paths = encoded.path_of(modality)
    assert paths
    for i, path in enumerate(paths):
        judge(path, f"multiframe-{modality.lower()}-{i + 1}", ACCEPTED_WARNINGS)


def test_seg_frames_reference_the_source_frames_where_the_nodules_are(encoded: Encoded) -> None:
    seg = hd.seg.segread(encoded.path_of("SEG")[0])
    source_uid = str(encoded.multiframe.SOPInstanceUID)
    shape = encoded.volume.shape
    z_of_frame = {encoded.frame_of(z): z for z in range(N_SLICES)}
    expected: set[tuple[int, int]] = set()  # (segment, source frame) with a non-empty mask
    for segment, finding in enumerate(encoded.result.findings, start=1):
        full = finding.full_mask(shape)
        expected |= {(segment, encoded.frame_of(z)) for z in range(N_SLICES) if full[z].any()}
    seen: set[tuple[int, int]] = set()
    frames = seg.pixel_array
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        [reference] = item.DerivationImageSequence[0].SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source_uid
        frame = int(reference.ReferencedFrameNumber)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        seen.add((segment, frame))
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, frame_position(encoded.multiframe, frame), atol=1e-3)
        full = encoded.result.findings[segment - 1].full_mask(shape)[z_of_frame[frame]]
        np.testing.assert_array_equal(frames[i].astype(bool), full)
    assert seen == expected
    assert int(seg.NumberOfFrames) == len(expected)
    # highdicom's own frame lookup agrees: the segments at the source frames are the findings' masks.
    for segment, finding in enumerate(encoded.result.findings, start=1):
        zs = [z for z in range(N_SLICES) if finding.full_mask(shape)[z].any()]
        by_frame = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=source_uid,
            source_frame_numbers=[encoded.frame_of(z) for z in zs],
            segment_numbers=[segment],
        )
        np.testing.assert_array_equal(by_frame[..., 0].astype(bool), finding.full_mask(shape)[zs])
    # The SEG's series-level reference names the multi-frame instance once.
    [series] = seg.ReferencedSeriesSequence
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [source_uid]


def test_sr_key_images_name_their_frame(encoded: Encoded) -> None:
    sr = hd.sr.srread(encoded.path_of("SR")[0])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(encoded.result.findings)
    for group, finding in zip(groups, encoded.result.findings, strict=True):
        assert group.tracking_identifier == f"Nodule {finding.number}"
        [line] = [i for i in group[0].ContentSequence if i.value_type == hd.sr.ValueTypeValues.SCOORD]
        assert line.name == codes.SCT.LongAxis
        [source] = line.ContentSequence
        assert source.RelationshipType == "SELECTED FROM"
        [reference] = source.ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == encoded.multiframe.SOPInstanceUID
        z = key_slice(finding)
        assert int(reference.ReferencedFrameNumber) == encoded.frame_of(z)
        # The line's ends lie in the nodule on that frame.
        mask = finding.full_mask(encoded.volume.shape)[z]
        for column, row in np.asarray(line.value):
            assert mask[int(row), int(column)]
    # The evidence lists the multi-frame instance once (and the SEG).
    evidence = [
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
    seg_uid = encoded.datasets[0].SOPInstanceUID
    assert sorted(evidence) == sorted([encoded.multiframe.SOPInstanceUID, seg_uid])


def test_gradcam_sc_shows_the_key_frame(encoded: Encoded) -> None:
    scs = [pydicom.dcmread(p) for p in encoded.path_of("OT")]
    for sc, finding in zip(scs, encoded.result.findings, strict=True):
        [reference] = sc.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == encoded.multiframe.SOPInstanceUID
        frame = int(reference.ReferencedFrameNumber)
        assert frame == encoded.frame_of(key_slice(finding))
        # Away from the nodule, heat map and text, the SC is the lung-windowed key frame, grey.
        pixels = sc.pixel_array
        band = slice(40, 90)  # rows between the burned-in text lines
        keep = np.ones((SIZE, SIZE), dtype=bool)
        (_, y0, x0), (_, y1, x1) = finding.box.start, finding.box.stop
        keep[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = False
        keep[: band.start] = keep[band.stop :] = False
        expected = lung_window(frame_hu(encoded.multiframe, frame))
        assert keep.sum() > 1000
        for channel in range(3):
            np.testing.assert_array_equal(pixels[..., channel][keep], expected[keep])


# --- refusals ---------------------------------------------------------------------------------------------
def _same_series(singles: list[pydicom.Dataset]) -> str:
    return str(singles[0].SeriesInstanceUID)


def test_a_mixture_of_single_and_multi_frame_images_is_refused(tmp_path: Path) -> None:
    singles = single_frame_series(tmp_path / "single")
    singles.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    half = N_SLICES // 2
    multiframe = to_multiframe(singles[half:], tmp_path / "multi" / "upper.dcm", series_uid=_same_series(singles))
    for k, ds in enumerate(singles[:half]):
        ds.save_as(tmp_path / "multi" / f"lower_{k:02d}.dcm", enforce_file_format=True)
    volume = load_series(sorted((tmp_path / "multi").iterdir()))
    assert {s.frame_number is None for s in volume.slices} == {True, False}  # the loader took both kinds
    result = result_with([sphere_finding(volume, 1, (half, 50, 40), 5.0)])
    with pytest.raises(EncodeError, match="mixes single-frame and multi-frame images"):
        encode_results(result, volume, [multiframe, *singles[:half]], uid_seed="mixture")


def test_two_multi_frame_instances_are_refused(tmp_path: Path) -> None:
    singles = single_frame_series(tmp_path / "single")
    singles.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    half = N_SLICES // 2
    series = _same_series(singles)
    lower = to_multiframe(singles[:half], tmp_path / "multi" / "lower.dcm", series_uid=series)
    upper = to_multiframe(singles[half:], tmp_path / "multi" / "upper.dcm", series_uid=series)
    volume = load_series(sorted((tmp_path / "multi").iterdir()))
    result = result_with([sphere_finding(volume, 1, (half, 50, 40), 5.0)])
    with pytest.raises(EncodeError, match="holds 2 multi-frame instances"):
        encode_results(result, volume, [lower, upper], uid_seed="two-multiframes")


def test_a_frame_reference_to_a_single_frame_image_is_refused(encoded: Encoded, tmp_path: Path) -> None:
    """A volume that claims frames of an image that has none (a loader bug) must not become references."""
    singles = single_frame_series(tmp_path / "single")
    by_position = sorted(singles, key=lambda ds: float(ds.ImagePositionPatient[2]))
    fake = by_position[0]
    slices = tuple(
        SourceSlice(str(fake.SOPInstanceUID), s.sop_class_uid, frame_number=s.frame_number)
        for s in encoded.volume.slices
    )
    volume = CTVolume(hu=encoded.volume.hu, geometry=encoded.volume.geometry, slices=slices, info=encoded.volume.info)
    with pytest.raises(EncodeError, match="not an Enhanced or Legacy Converted Enhanced CT image"):
        encode_results(encoded.result, volume, [fake], uid_seed="fake-frames")


def test_per_frame_orientation_is_refused_with_the_reason(encoded: Encoded) -> None:
    """Valid DICOM, but highdicom's Segmentation reads a multi-frame source's orientation from the shared
    functional groups only: refuse before building anything rather than fail inside highdicom."""
    multiframe = copy.deepcopy(encoded.multiframe)
    shared = multiframe.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence
    del shared.PlaneOrientationSequence
    for item in multiframe.PerFrameFunctionalGroupsSequence:
        item.PlaneOrientationSequence = copy.deepcopy(orientation)
    with pytest.raises(EncodeError, match="lacks PlaneOrientationSequence in its shared functional groups"):
        encode_results(encoded.result, encoded.volume, [multiframe], uid_seed="per-frame-orientation")
