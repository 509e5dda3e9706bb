"""Findings -> DICOM: a SEG (one segment per nodule), a TID 1500 SR and one Grad-CAM SC per nodule.

The node and the offline CLI call :func:`encode_results` then :func:`write_results`. All checks run before
anything is built, and nothing is written unless every object was built, so a bad finding never leaves
a half-written result behind.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import pydicom

from node.encode import common
from node.encode.followup import nodule_identities
from node.encode.gradcam_sc import encode_sc
from node.encode.seg import encode_seg
from node.encode.sr import encode_sr
from node.errors import EncodeError
from node.store.spool import write_durably
from pipelines.base import CTVolume, PipelineResult, ResultStatus
from pipelines.followup.assessment import FollowUpReport

__all__ = ["EncodeError", "encode_results", "write_results"]


def encode_results(
    result: PipelineResult,
    volume: CTVolume,
    source_datasets: Sequence[pydicom.Dataset],
    *,
    uid_seed: str,
    series_number_base: int = 9000,
    fractional_seg: bool = False,
    previous_reports: Sequence[pydicom.Dataset] = (),
    reading: FollowUpReport | None = None,
    gradcam_sc: bool = True,
) -> list[pydicom.Dataset]:
    """The SEG (when there are findings), the SR (always, for a completed result) and one SC per finding.

    ``source_datasets`` are the source CT instances in any order; they are matched to the volume's slices
    by SOP Instance UID. They are single-frame images, or one multi-frame CT instance whose frames are the
    slices (then every reference to a slice names its frame).
    Every UID of the outputs derives from ``uid_seed`` (same seed, same UIDs).
    A not-applicable result gives no objects: the node did not analyse the series.
    ``previous_reports`` are the SRs this result supersedes (the series grew after they were made): the new
    SR lists them in its Predecessor Documents Sequence and every new series says it supersedes earlier ones.
    ``reading`` is the follow-up reading (``pipelines.followup.assessment``): the SEG and SR then carry the
    prior's tracking identity for the nodules seen before, and the SR the growth, Lung-RADS and Brock risk.
    ``gradcam_sc=False`` leaves out the Grad-CAM Secondary Captures (``followup.outputs.gradcam_sc``).
    Raises EncodeError for findings that cannot be encoded faithfully.
    """
    common.derive_uid(uid_seed)  # fails fast on an empty seed
    if result.status is not ResultStatus.COMPLETED:
        return []
    checked = common.check_inputs(result, volume, source_datasets)
    with warnings.catch_warnings():
        # highdicom warns about a single-component PatientName copied from the source, and the warning's
        # text holds the name: keep it out of the logs (no PHI in logs). The name is copied unchanged.
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        return _encode(
            result, volume, checked, uid_seed, series_number_base, fractional_seg, previous_reports, reading, gradcam_sc
        )


def _encode(
    result: PipelineResult,
    volume: CTVolume,
    checked: common.CheckedInput,
    uid_seed: str,
    series_number_base: int,
    fractional_seg: bool,
    previous_reports: Sequence[pydicom.Dataset],
    reading: FollowUpReport | None,
    gradcam_sc: bool,
) -> list[pydicom.Dataset]:
    outputs: list[pydicom.Dataset] = []
    seg = None
    if result.findings:
        seg = encode_seg(
            result,
            checked,
            volume.shape,
            uid_seed=uid_seed,
            series_number=series_number_base + common.SEG_SERIES_OFFSET,
            fractional=fractional_seg,
            superseding=bool(previous_reports),
            identities=nodule_identities(uid_seed, result.findings, reading) if reading is not None else None,
        )
        outputs.append(seg)
    outputs.append(
        encode_sr(
            result,
            volume,
            checked,
            seg,
            uid_seed=uid_seed,
            series_number=series_number_base + common.SR_SERIES_OFFSET,
            previous_reports=previous_reports,
            reading=reading,
        )
    )
    for index, finding in enumerate(result.findings if gradcam_sc else (), start=1):
        outputs.append(
            encode_sc(
                result,
                volume,
                checked,
                finding,
                instance_number=index,
                uid_seed=uid_seed,
                series_number=series_number_base + common.SC_SERIES_OFFSET,
                superseding=bool(previous_reports),
            )
        )
    return outputs


def write_results(datasets: Sequence[pydicom.Dataset], out_dir: Path) -> list[Path]:
    """Write Part-10 files named ``<SOPInstanceUID>.dcm``; each via a temp file, fsync and rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if not pydicom.uid.UID(uid).is_valid:
            raise EncodeError(f"refusing to write a dataset with an invalid SOP Instance UID {uid!r}")
        target = out_dir / f"{uid}.dcm"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_durably(target, [buffer.getvalue()], temp_dir=out_dir)
        paths.append(target)
    return paths
