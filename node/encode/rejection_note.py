"""The IHE IOCM rejection note: a Key Object Selection Document that withdraws earlier result objects.

When a series grew after the node reported on it, the new run's results replace the old ones. A PACS that
implements IHE Imaging Object Change Management hides (and may later delete) every instance a rejection note
lists. The note is a KOS (SOP class 1.2.840.10008.5.1.4.1.1.88.59) whose document title is one of the
rejection codes of PS3.16 CID 7010, whose content lists every rejected instance, and whose Current Requested
Procedure Evidence Sequence references them all; it belongs to the study of the rejected objects.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.encode import common
from node.errors import EncodeError

# ``rejection_reason`` of a destination -> the note's document title (PS3.16 CID 7010).
REJECTION_TITLES: dict[str, Code] = {
    "quality": codes.DCM.RejectedForQualityReasons,  # (113001, DCM)
    "retention": codes.DCM.DataRetentionPolicyExpired,  # (113039, DCM)
}

# The note's own series, after the SEG/SR/SC series of the results (common.*_SERIES_OFFSET).
REJECTION_NOTE_SERIES_NUMBER = 9000 + 4
REJECTION_NOTE_DESCRIPTION = f"AI results withdrawn (superseded) {common.DESCRIPTION_SUFFIX}"[: common.LO_MAX_CHARS]


def rejection_note_uids(uid_seed: str, reason: str, rejected_uids: Sequence[str]) -> tuple[str, str]:
    """(series, SOP instance) UIDs of the note that rejects exactly ``rejected_uids`` for ``reason``.

    Derived, not random: planning the same withdrawal again after a crash makes the same note, which the PACS
    stores once. A later note for other objects gets other UIDs.
    """
    parts = ["rejection-note", reason, *sorted(rejected_uids)]
    return str(common.derive_uid(uid_seed, *parts, "series")), str(common.derive_uid(uid_seed, *parts))


def encode_rejection_note(rejected: Sequence[pydicom.Dataset], *, reason: str, uid_seed: str) -> pydicom.Dataset:
    """The KOS rejecting every dataset in ``rejected`` (the node's own earlier results, one study).

    Raises EncodeError when there is nothing to reject, the objects span studies, or the reason is unknown.
    """
    if not rejected:
        raise EncodeError("a rejection note needs at least one object to reject")
    if reason not in REJECTION_TITLES:
        raise EncodeError(f"unknown rejection reason {reason!r}; known: {sorted(REJECTION_TITLES)}")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise EncodeError(f"the objects to reject belong to {len(studies)} studies; a rejection note covers one")
    uids = [str(ds.SOPInstanceUID) for ds in rejected]
    if len(set(uids)) != len(uids):
        raise EncodeError("the objects to reject repeat a SOP Instance UID")
    series_uid, sop_uid = rejection_note_uids(uid_seed, reason, uids)
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTION_TITLES[reason],
        referenced_objects=list(rejected),
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=common.NODE_DEVICE_OBSERVER_UID,
                name="AINODE",
                manufacturer_name=common.NODE_MANUFACTURER,
            ),
        ),
        description="Superseded by the results of a newer run on the same series",
    )
    with warnings.catch_warnings():
        # As in encode_results: highdicom's warning about a one-component PatientName quotes the name (PHI).
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        note = hd.ko.KeyObjectSelectionDocument(
            evidence=list(rejected),
            content=content,
            series_instance_uid=series_uid,
            series_number=REJECTION_NOTE_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=common.NODE_MANUFACTURER,
        )
    note.SeriesDescription = REJECTION_NOTE_DESCRIPTION
    return note
