"""What the SEG, SR and Grad-CAM SC encoders share: checks, UIDs, equipment, series numbers, charset.

Every output UID is derived from the job's ``uid_seed``: re-running a killed job produces the same
objects with the same UIDs, so the PACS replaces them instead of holding two copies.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from node.errors import EncodeError
from pipelines.base import CTVolume, Finding, PipelineResult
from pipelines.loading import MULTI_FRAME_CT_CLASSES, functional_group

# Who made the objects. Manufacturer is the node; the model goes into ManufacturerModelName and
# SoftwareVersions, and both into ContributingEquipmentSequence.
NODE_MANUFACTURER = "AINODE open-source PACS AI node"
NODE_SOFTWARE_VERSION = "0.1.0"
NODE_DEVICE_SERIAL_NUMBER = "AINODE-1"
# Name-based UUIDs (RFC 4122 v5) in this namespace become 2.25 UIDs (PS3.5 B.2). Not pydicom's
# generate_uid(prefix=None, entropy_srcs=...): with prefix None it ignores the entropy and is random.
UID_NAMESPACE = uuid.UUID("6f1c2a8e-2f4b-5c3d-9e7a-1b2c3d4e5f60")
# Joins the parts before hashing, so ("ab", "c") and ("a", "bc") give different UIDs.
_UID_PART_SEPARATOR = "\x1f"

ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence

# Series numbers relative to ``series_number_base``: one new series per object type.
SEG_SERIES_OFFSET = 1
SR_SERIES_OFFSET = 2
SC_SERIES_OFFSET = 3

# Part of every SeriesDescription, so a worklist shows the caveat before anything is opened.
DESCRIPTION_SUFFIX = "AI NOT FOR DIAGNOSTIC USE"

# Longest value of a LO element (SeriesDescription and friends).
LO_MAX_CHARS = 64

# How far (as a fraction of the smallest voxel spacing) a source slice may sit from where the volume
# geometry puts it: rounding in DS values and a median slice spacing stay far below, a misplaced or
# missing slice (a whole spacing) far above.
POSITION_TOLERANCE_FRACTION = 0.1


def derive_uid(uid_seed: str, *parts: str) -> UID:
    """A UID that depends only on the seed and ``parts`` (2.25 form, as in PS3.5 B.2)."""
    if not uid_seed:
        raise EncodeError("uid_seed must be a non-empty string (UIDs are derived from it)")
    name = _UID_PART_SEPARATOR.join([uid_seed, *parts])
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}")


# A fixed UID naming the node as an SR observer device (the DCM "Device Observer UID").
NODE_DEVICE_OBSERVER_UID = derive_uid("ainode", "device-observer")


def series_description(kind: str, *, supersedes: bool = False) -> str:
    """E.g. 'AI nodule SEG AI NOT FOR DIAGNOSTIC USE', cut to fit LO. Results of a re-run after the
    series grew say so, so a reader tells the current report from the one it replaces."""
    middle = f"{kind} supersedes earlier" if supersedes else kind
    base = f"AI nodule {middle} {DESCRIPTION_SUFFIX}"
    return base[:LO_MAX_CHARS]


def equipment(result: PipelineResult) -> list[hd.ContributingEquipment]:
    """ContributingEquipmentSequence item naming the node and the model that produced the findings."""
    model = result.model
    return [
        hd.ContributingEquipment(
            manufacturer=NODE_MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=model_name(result),
            software_versions=software_versions(result),
            device_serial_number=NODE_DEVICE_SERIAL_NUMBER,
            contribution_description=(
                f"Lung nodule AI {model.name} {model.version}"
                + (f" weights sha256 {model.weights_sha256[:16]}" if model.weights_sha256 else "")
            )[:LO_MAX_CHARS],
        )
    ]


def model_name(result: PipelineResult) -> str:
    return (result.model.name or result.pipeline)[:LO_MAX_CHARS]


def software_versions(result: PipelineResult) -> list[str]:
    return [f"ainode {NODE_SOFTWARE_VERSION}", f"{model_name(result)} {result.model.version}"[:LO_MAX_CHARS]]


def finish_header(target: pydicom.Dataset, source: pydicom.Dataset, result: PipelineResult) -> None:
    """What highdicom's constructors cannot express: a multi-valued SoftwareVersions and the charset."""
    # highdicom types software_versions as str | tuple[str]; pydicom wants a list for a multi-valued LO.
    target.SoftwareVersions = software_versions(result)
    copy_character_set(target, source)
    _drop_incomplete_study_references(target)


def _drop_incomplete_study_references(target: pydicom.Dataset) -> None:
    """highdicom copies the source's ReferencedStudySequence (General Study, Type 3); some sources carry
    items without ReferencedSOPClassUID (the TCIA Philips series does), which dciodvfy rightly calls an
    error in our object. Keep only complete items, and drop the optional element when none is left."""
    if "ReferencedStudySequence" not in target:
        return
    complete = [
        item
        for item in target.ReferencedStudySequence
        if item.get("ReferencedSOPClassUID") and item.get("ReferencedSOPInstanceUID")
    ]
    if complete:
        target.ReferencedStudySequence = complete
    else:
        del target.ReferencedStudySequence


def algorithm_version(result: PipelineResult) -> str:
    """Version plus a short weights hash: the exact model that ran."""
    version = result.model.version or "unknown"
    if result.model.weights_sha256:
        version = f"{version} sha256:{result.model.weights_sha256[:12]}"
    return version[:LO_MAX_CHARS]


def copy_character_set(target: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Use the source's SpecificCharacterSet, so that copied non-ASCII names keep their meaning.

    highdicom copies the patient/study attributes as decoded Python strings; pydicom encodes them
    on write with whatever SpecificCharacterSet the target carries.
    """
    charset = source.get("SpecificCharacterSet")
    if charset:
        target.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in target:
        del target.SpecificCharacterSet


@dataclass(frozen=True)
class CheckedInput:
    """Source instances in volume order, after all the checks that must pass before encoding.

    A source series is either single-frame images (one per volume slice) or ONE multi-frame CT instance
    (Enhanced CT / Legacy Converted Enhanced CT) whose frames are the volume slices.
    """

    ordered_sources: tuple[pydicom.Dataset, ...]  # ordered_sources[z] is the instance holding volume slice z
    frame_numbers: tuple[int | None, ...]  # 1-based frame of ordered_sources[z]; None for single-frame images
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers[0] is not None

    @property
    def instances(self) -> tuple[pydicom.Dataset, ...]:
        """Each source instance once, in volume order (the multi-frame instance appears only once)."""
        unique: dict[str, pydicom.Dataset] = {}
        for ds in self.ordered_sources:
            unique.setdefault(str(ds.SOPInstanceUID), ds)
        return tuple(unique.values())

    def referenced_frames(self, z: int) -> list[int] | None:
        """ReferencedFrameNumber value(s) for volume slice ``z``: [frame] for a multi-frame source, else None."""
        frame = self.frame_numbers[z]
        return None if frame is None else [frame]


def check_inputs(result: PipelineResult, volume: CTVolume, source_datasets: Sequence[pydicom.Dataset]) -> CheckedInput:
    """Raise EncodeError, naming the problem, for anything that would give an invalid or misleading object."""
    if not source_datasets:
        raise EncodeError("no source datasets given")
    by_uid: dict[str, pydicom.Dataset] = {}
    for ds in source_datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        if not uid:
            raise EncodeError("a source dataset has no SOPInstanceUID")
        by_uid[uid] = ds
    _check_frame_layout(volume)
    ordered: list[pydicom.Dataset] = []
    for z, source_slice in enumerate(volume.slices):
        match = by_uid.get(source_slice.sop_instance_uid)
        if match is None:
            raise EncodeError(
                f"volume slice {z} references SOP Instance {source_slice.sop_instance_uid}, "
                "which is not among the source instances of the series"
            )
        _check_frame_in_dataset(z, source_slice.frame_number, match)
        ordered.append(match)
    frame_numbers = tuple(s.frame_number for s in volume.slices)
    if frame_numbers[0] is not None:
        _check_multiframe_functional_groups(ordered[0])

    first = ordered[0]
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(attr, "")) for ds in ordered}
        if len(values) != 1 or "" in values:
            raise EncodeError(f"source slices disagree on (or lack) {attr}: one series is required")
    _check_geometry(volume, ordered, frame_numbers)

    for finding in result.findings:
        _check_finding(finding, volume)
    numbers = [f.number for f in result.findings]
    if len(set(numbers)) != len(numbers):
        raise EncodeError(f"finding numbers must be unique, got {numbers}")
    return CheckedInput(
        ordered_sources=tuple(ordered),
        frame_numbers=frame_numbers,
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
    )


def _check_frame_layout(volume: CTVolume) -> None:
    """Single-frame images only, or the frames of exactly one multi-frame instance, each frame once.

    The SEG references either a list of single-frame images or one multi-frame image (highdicom's
    Segmentation takes no mixture), and a viewer resolves a frame reference within one instance only.
    """
    from_frames = [s for s in volume.slices if s.frame_number is not None]
    if not from_frames:
        return
    if len(from_frames) != len(volume.slices):
        raise EncodeError(
            f"the source series mixes single-frame and multi-frame images ({len(volume.slices) - len(from_frames)} "
            f"slices from single-frame images, {len(from_frames)} from frames of multi-frame images); "
            "only all single-frame or one multi-frame instance is supported"
        )
    instances = sorted({s.sop_instance_uid for s in from_frames})
    if len(instances) > 1:
        raise EncodeError(
            f"the source series holds {len(instances)} multi-frame instances; "
            "only a series of one multi-frame instance is supported"
        )
    frames = [s.frame_number for s in from_frames]
    if len(set(frames)) != len(frames):
        raise EncodeError("two volume slices come from the same frame of the multi-frame source image")


def _check_frame_in_dataset(z: int, frame_number: int | None, ds: pydicom.Dataset) -> None:
    """A frame reference needs a multi-frame CT instance holding that frame; no frame, a single-frame image."""
    is_multiframe_class = str(ds.get("SOPClassUID", "")) in MULTI_FRAME_CT_CLASSES
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame_number is None:
        if is_multiframe_class or n_frames > 1:
            raise EncodeError(f"volume slice {z} names no frame, but its source image is a multi-frame image")
        return
    if not is_multiframe_class:
        raise EncodeError(
            f"volume slice {z} comes from frame {frame_number} of an image of SOP class {ds.get('SOPClassUID', '?')}, "
            "not an Enhanced or Legacy Converted Enhanced CT image"
        )
    if not 1 <= frame_number <= n_frames:
        raise EncodeError(
            f"volume slice {z} comes from frame {frame_number}, but the multi-frame source holds {n_frames} frames"
        )


def _check_multiframe_functional_groups(ds: pydicom.Dataset) -> None:
    """highdicom's Segmentation reads the source's orientation and pixel spacing from the shared functional
    groups (one plane orientation for all frames); a source that keeps them per frame cannot be encoded."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    group = shared[0] if shared else pydicom.Dataset()
    missing = [name for name in ("PlaneOrientationSequence", "PixelMeasuresSequence") if not group.get(name)]
    if missing:
        raise EncodeError(
            f"the multi-frame source image lacks {' and '.join(missing)} in its shared functional groups "
            "(per-frame orientation or pixel spacing is not supported)"
        )


def frame_position(ds: pydicom.Dataset, frame_number: int | None) -> npt.NDArray[np.float64]:
    """ImagePositionPatient of a single-frame image, or of one frame (1-based) of a multi-frame image."""
    if frame_number is None:
        return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    position = functional_group(ds, frame_number - 1, "PlanePositionSequence")  # the loader's lookup
    if position is None:
        raise EncodeError(f"frame {frame_number} of the multi-frame source image has no PlanePositionSequence")
    return np.asarray([float(v) for v in position.ImagePositionPatient], dtype=np.float64)


def _check_geometry(volume: CTVolume, ordered: Sequence[pydicom.Dataset], frame_numbers: Sequence[int | None]) -> None:
    """The volume's geometry must be the source slices' geometry, or the SEG would not align."""
    _z, rows, columns = volume.shape
    tolerance_mm = POSITION_TOLERANCE_FRACTION * min(volume.geometry.spacing_mm)
    for k, (ds, frame) in enumerate(zip(ordered, frame_numbers, strict=True)):
        if int(ds.Rows) != rows or int(ds.Columns) != columns:
            raise EncodeError(f"source slice {k} is {ds.Rows}x{ds.Columns}, the volume grid is {rows}x{columns}")
        expected = volume.geometry.voxel_to_patient([k, 0, 0])
        actual = frame_position(ds, frame)
        if float(np.linalg.norm(expected - actual)) > tolerance_mm:
            raise EncodeError(
                f"source slice {k} is at {actual.round(3).tolist()} mm but the volume geometry puts it at "
                f"{expected.round(3).tolist()} mm"
            )


def _check_finding(finding: Finding, volume: CTVolume) -> None:
    n = finding.number
    if n < 1:
        raise EncodeError(f"finding number must be >= 1, got {n}")
    if any(b > s for b, s in zip(finding.box.stop, volume.shape, strict=True)):
        raise EncodeError(
            f"finding {n}: box {finding.box.start}..{finding.box.stop} lies off the source grid of shape {volume.shape}"
        )
    # The arrays are mutable, so the checks made when the Finding was built may no longer hold.
    try:
        finding.check()
    except ValueError as exc:
        raise EncodeError(f"finding {n}: {exc}") from None
    for name, value in (
        ("long axis", finding.long_axis_mm),
        ("short axis", finding.short_axis_mm),
        ("volume", finding.volume_mm3),
    ):
        if not np.isfinite(value) or value < 0:
            raise EncodeError(f"finding {n}: {name} {value} is not a finite non-negative number")
    if not 0.0 <= finding.malignancy_probability <= 1.0:
        raise EncodeError(f"finding {n}: malignancy probability {finding.malignancy_probability} outside [0, 1]")


def key_slice(finding: Finding) -> int:
    """Volume index of the slice where the nodule's mask has the largest area."""
    areas = finding.mask.reshape(finding.mask.shape[0], -1).sum(axis=1)
    return finding.box.start[0] + int(np.argmax(areas))
