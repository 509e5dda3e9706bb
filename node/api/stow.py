"""STOW-RS (PS3.18 §10.5): ``POST /dicom-web/studies`` with a multipart/related body of
application/dicom parts, each stored through :meth:`InstanceStore.store_part10` — the same durable
path as C-STORE (temp file, fsync, rename; then the index) — before the response is sent. The body is
read as a stream into spooled parts by :mod:`node.api.stow_body`; this module stores them and builds the answer.

Response (PS3.18 §10.5.3, application/dicom+json): 200 every instance stored; 202 some stored, the
rest in FailedSOPSequence with a FailureReason; 409 none stored; when the request as a whole is refused,
nothing is stored: 415 not multipart/related of application/dicom, 400 a malformed body, 413 a body over
``http.max_stow_bytes``. The human-readable reason of each failure is the Error
Comment of its FailedSOPSequence item; one ``Warning: 299`` header (PS3.18 §8.8.4 style) summarises
them (one header per part would exceed what HTTP clients accept for large uploads).
"""

from __future__ import annotations

import enum
import io
import re
from dataclasses import dataclass, field
from typing import Any

import structlog

# pydicom-internal but stable (node/store/ingest.py reads File Meta the same way).
from pydicom.filereader import _read_file_meta_info, read_preamble

from node import metrics
from node.api.stow_body import SpooledPart, media_type
from node.dimse_status import StoreStatus
from node.errors import InvalidDatasetError, InvalidIdentifierError, OutOfResourcesError
from node.store.ingest import InstanceStore
from node.uids import validate_uid

log = structlog.get_logger(__name__)

DICOM_JSON = "application/dicom+json"
SOURCE = "stowrs"
# The files are durable before this wait; past it the answer goes out and the index catches up.
INDEX_FLUSH_TIMEOUT_S = 30.0


class FailureReason(enum.IntEnum):
    """FailureReason (0008,1197) values used here (PS3.18 Table 10.5.3-2 / PS3.4 Annex B)."""

    OUT_OF_RESOURCES = StoreStatus.OUT_OF_RESOURCES
    CANNOT_UNDERSTAND = StoreStatus.CANNOT_UNDERSTAND
    PROCESSING_FAILURE = StoreStatus.PROCESSING_FAILURE


@dataclass(frozen=True)
class PartOutcome:
    index: int  # 1-based position of the part in the request
    sop_class_uid: str
    sop_instance_uid: str
    failure: FailureReason | None = None
    reason: str = ""
    study_uid: str = ""  # stored parts: the study they belong to (the audit message names it)


@dataclass
class StowResult:
    outcomes: list[PartOutcome] = field(default_factory=list)

    @property
    def stored(self) -> list[PartOutcome]:
        return [o for o in self.outcomes if o.failure is None]

    @property
    def failed(self) -> list[PartOutcome]:
        return [o for o in self.outcomes if o.failure is not None]

    def studies(self) -> dict[str, dict[str, int]]:
        """The stored parts by study and SOP class: {study UID: {SOP class UID: instances}}."""
        out: dict[str, dict[str, int]] = {}
        for o in self.stored:
            by_class = out.setdefault(o.study_uid, {})
            by_class[o.sop_class_uid] = by_class.get(o.sop_class_uid, 0) + 1
        return out

    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def dicom_json(self) -> dict[str, Any]:
        def item(o: PartOutcome) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if o.sop_class_uid:
                out["00081150"] = {"vr": "UI", "Value": [o.sop_class_uid]}
            if o.sop_instance_uid:
                out["00081155"] = {"vr": "UI", "Value": [o.sop_instance_uid]}
            if o.failure is not None:
                out["00081197"] = {"vr": "US", "Value": [int(o.failure)]}
                # Error Comment (LO, 64 characters): the reason, as a C-STORE response would carry it.
                out["00000902"] = {"vr": "LO", "Value": [f"part {o.index}: {o.reason}"[:64]]}
            return out

        body: dict[str, Any] = {}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [item(o) for o in self.stored]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [item(o) for o in self.failed]}
        return body

    def warnings(self) -> list[str]:
        """One summarised Warning header, however many parts failed (clients refuse long header lists);
        each part's reason is in its FailedSOPSequence item of the body (Error Comment)."""
        if not self.failed:
            return []
        first = self.failed[0]
        more = f"; {len(self.failed) - 1} more, reasons in FailedSOPSequence" if len(self.failed) > 1 else ""
        return [warning_header(f"{len(self.failed)} part(s) failed: part {first.index}: {first.reason}{more}")]


def warning_header(text: str) -> str:
    # RFC 7234 warn-text is a quoted-string of latin-1 text: keep it printable ASCII and short.
    clean = re.sub(r"[^\x20-\x7e]", "?", text).replace("\\", "/").replace('"', "'")[:300]
    return f'299 ainode "{clean}"'


# --- storing -----------------------------------------------------------------------------------------
def store_parts(store: InstanceStore, parts: list[SpooledPart], *, calling_ae: str, called_ae: str) -> StowResult:
    """Store every part (blocking: each returns once durable and indexed). One part's content is in
    memory at a time."""
    result = StowResult()
    for part in parts:
        index = part.index
        part_type, _ = media_type(part.headers.get("content-type", "application/dicom"))
        if part_type != "application/dicom":
            result.outcomes.append(
                _failed(
                    index, FailureReason.CANNOT_UNDERSTAND, f"part Content-Type {part_type} is not application/dicom"
                )
            )
            continue
        content = part.read()
        try:
            stored = store.store_part10(content, calling_ae=calling_ae, called_ae=called_ae)
        except OutOfResourcesError as exc:
            result.outcomes.append(
                _failed(index, FailureReason.OUT_OF_RESOURCES, str(exc), "out_of_resources", content)
            )
        except (InvalidDatasetError, InvalidIdentifierError) as exc:
            result.outcomes.append(_failed(index, FailureReason.CANNOT_UNDERSTAND, str(exc), "invalid", content))
        except Exception as exc:  # one bad part must not lose the others
            log.exception("stow_part_processing_failure", part=index)
            result.outcomes.append(
                _failed(
                    index,
                    FailureReason.PROCESSING_FAILURE,
                    f"processing failure: {type(exc).__name__}",
                    "processing_failure",
                )
            )
        else:
            metrics.instances_received.labels(source=SOURCE, result=stored.result).inc()
            metrics.bytes_received.labels(source=SOURCE).inc(stored.size_bytes)
            result.outcomes.append(
                PartOutcome(index, stored.sop_class_uid, stored.sop_instance_uid, study_uid=stored.study_uid)
            )
    # store_part10 returns once the file is durable; its index rows are written by the store's
    # indexer thread. The STOW-RS answer waits for them too, so a client that got 200 finds its
    # instances in the API at once (as a DIMSE sender does after releasing its association).
    if result.stored and not store.flush(timeout_s=INDEX_FLUSH_TIMEOUT_S):
        log.warning("stow_index_lagging", stored=len(result.stored), timeout_s=INDEX_FLUSH_TIMEOUT_S)
    return result


def _failed(
    index: int, failure: FailureReason, reason: str, metric_reason: str = "invalid", content: bytes = b""
) -> PartOutcome:
    metrics.instances_rejected.labels(source=SOURCE, reason=metric_reason).inc()
    sop_class, sop_instance = _announced_uids(content)
    return PartOutcome(index, sop_class, sop_instance, failure, reason)


def _announced_uids(content: bytes) -> tuple[str, str]:
    """The SOP Class/Instance UIDs a failed part's File Meta announces, when readable and valid, so the
    client can tell which instance failed; ("", "") otherwise."""
    try:
        stream = io.BytesIO(content)
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
        return (
            validate_uid(meta.get("MediaStorageSOPClassUID"), "SOP Class UID"),
            validate_uid(meta.get("MediaStorageSOPInstanceUID"), "SOP Instance UID"),
        )
    except Exception:  # anything unreadable simply has no UIDs to report
        return "", ""
