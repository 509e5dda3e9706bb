"""DICOM Segmentation: one segment per nodule, on the source CT grid, frames only where a nodule is.

highdicom computes each frame's PlanePositionSequence from the source image it was derived from, so a
frame sits exactly on its CT slice even though empty frames are left out (the misalignment MONAI Deploy
had when it dropped empty frames but kept positions by index, their issue #397).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes

from node.encode import common
from node.encode.common import CheckedInput
from node.errors import EncodeError
from pipelines.base import Finding, PipelineResult

# Bits of the stored fractional values: 255 = probability 1.0.
MAX_FRACTIONAL_VALUE = 255
# Colour of every nodule segment in viewers that honour RecommendedDisplayCIELabValue (a warm orange).
NODULE_DISPLAY_RGB = (255, 140, 0)  # 0..255 per channel, as CIELabColor.from_rgb expects

SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SEGMENT_TYPE = codes.SCT.Nodule
ANATOMIC_REGION = codes.SCT.Lung


def tracking_uid(uid_seed: str, finding: Finding) -> str:
    """The nodule's Tracking UID, shared by its SEG segment and its SR measurement group."""
    return common.derive_uid(uid_seed, "nodule", str(finding.number))


def tracking_id(finding: Finding) -> str:
    return f"Nodule {finding.number}"


def segment_number_of(findings: Sequence[Finding]) -> dict[int, int]:
    """Finding number -> segment number (1..n in finding order)."""
    return {f.number: i for i, f in enumerate(findings, start=1)}


def algorithm_identification(result: PipelineResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=common.model_name(result),
        family=common.ALGORITHM_FAMILY,
        version=common.algorithm_version(result),
        source=common.NODE_MANUFACTURER,
    )


def _slab_sources(
    checked: CheckedInput, z_start: int, z_stop: int
) -> tuple[list[pydicom.Dataset], list[hd.PlanePositionSequence] | None]:
    """Source images and plane positions for the SEG array of volume slices ``z_start..z_stop``.

    Single-frame: the slab's own images, and highdicom takes each frame's position from its image.
    Multi-frame: highdicom takes one multi-frame source, and without positions it would pair array plane i
    with source frame i; so give each plane its source frame's position, from which highdicom finds the
    frame (ReferencedFrameNumber in the DerivationImageSequence) and copies its exact position.
    """
    if not checked.is_multiframe:
        return list(checked.ordered_sources[z_start:z_stop]), None
    source = checked.ordered_sources[0]
    positions: list[hd.PlanePositionSequence] = []
    for z in range(z_start, z_stop):
        frame = checked.frame_numbers[z]
        assert frame is not None  # check_inputs: every slice of a multi-frame source names its frame
        position = common.frame_position(source, frame)
        positions.append(
            hd.PlanePositionSequence(
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                image_position=(float(position[0]), float(position[1]), float(position[2])),
            )
        )
    return [source], positions


def encode_seg(
    result: PipelineResult,
    checked: CheckedInput,
    volume_shape: tuple[int, int, int],
    *,
    uid_seed: str,
    series_number: int,
    fractional: bool = False,
    superseding: bool = False,
    identities: Mapping[int, tuple[str, str]] | None = None,
) -> hd.seg.Segmentation:
    """``identities``: finding number -> (Tracking UID, Tracking Identifier) when a follow-up reading
    carries a prior's over (``node.encode.followup.nodule_identities``); else derived from the seed."""
    findings = result.findings
    if not findings:
        raise EncodeError("a SEG needs at least one finding")
    # Only the slab of source slices that holds nodules goes in: the SEG references exactly those
    # slices, and the array stays small (a full-volume array per nodule would be hundreds of MB).
    z_start = min(f.box.start[0] for f in findings)
    z_stop = max(f.box.stop[0] for f in findings)
    _, rows, columns = volume_shape
    dtype: type[np.floating] | type[np.uint8] = np.float32 if fractional else np.uint8
    pixels: npt.NDArray[np.generic] = np.zeros((z_stop - z_start, rows, columns, len(findings)), dtype=dtype)
    for s, finding in enumerate(findings):
        (z0, y0, x0), (z1, y1, x1) = finding.box.start, finding.box.stop
        crop: npt.NDArray[np.generic]
        if fractional:
            probability = finding.probability_map
            # A finding without a probability map is certain where its mask is.
            crop = (probability * finding.mask) if probability is not None else finding.mask.astype(np.float32)
            crop = np.clip(crop, 0.0, 1.0).astype(np.float32)
        else:
            crop = finding.mask.astype(np.uint8)
        pixels[z0 - z_start : z1 - z_start, y0:y1, x0:x1, s] = crop

    algorithm = algorithm_identification(result)
    descriptions = []
    for number, finding in enumerate(findings, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=identities[finding.number][1] if identities else tracking_id(finding),
                segmented_property_category=SEGMENT_CATEGORY,
                segmented_property_type=SEGMENT_TYPE,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=identities[finding.number][0] if identities else tracking_uid(uid_seed, finding),
                tracking_id=identities[finding.number][1] if identities else tracking_id(finding),
                anatomic_regions=[ANATOMIC_REGION],
                display_color=hd.color.CIELabColor.from_rgb(*NODULE_DISPLAY_RGB),
            )
        )
    sources, plane_positions = _slab_sources(checked, z_start, z_stop)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        plane_positions=plane_positions,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
        ),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional else None,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        segment_descriptions=descriptions,
        series_instance_uid=common.derive_uid(uid_seed, "seg-series"),
        series_number=series_number,
        sop_instance_uid=common.derive_uid(uid_seed, "seg-instance"),
        instance_number=1,
        manufacturer=common.NODE_MANUFACTURER,
        manufacturer_model_name=common.model_name(result),
        software_versions=common.software_versions(result)[0],
        device_serial_number=common.NODE_DEVICE_SERIAL_NUMBER,
        content_label="NODULES",
        content_description=f"Lung nodules found by AI, {common.DESCRIPTION_SUFFIX}"[: common.LO_MAX_CHARS],
        content_creator_name="AINODE^AI",
        omit_empty_frames=True,
        contributing_equipment=common.equipment(result),
        series_description=common.series_description("SEG", supersedes=superseding),
    )
    common.finish_header(seg, sources[0], result)
    return seg
