"""Storing one received instance: validate, write durably, index. Shared by C-STORE and STOW-RS.

The order is the promise: the file is fsynced and renamed into place, and its index rows are
committed, before the caller is allowed to answer Success.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# pydicom-internal but stable since 1.x: reads the File Meta group and leaves the stream at the
# first dataset byte, which is what lets STOW-RS and C-STORE share one code path.
from pydicom.filereader import (
    _read_file_meta_info,
    read_preamble,
)
from pydicom.uid import UID

from node import __version__, metrics
from node.dicom_attributes import routing_attributes
from node.errors import InvalidDatasetError, OutOfResourcesError
from node.index.db import Connection, Database, IndexUnavailable, TransientIndexError, now
from node.index.series import InstanceRecord, SeriesRecord, StudyRecord, index_instance
from node.logging_setup import scrub_values
from node.store.fast_dicom import encode_file_meta, is_image_storage, parse_header
from node.store.spool import Spool
from node.uids import validate_uid

log = structlog.get_logger(__name__)

IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.10.1234.1")  # node's implementation UID
IMPLEMENTATION_VERSION_NAME = f"AINODE_{__version__}"[:16]

StoreResult = Literal["new", "identical", "replaced"]


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    path: Path
    size_bytes: int
    result: StoreResult


def _float_list(ds: Dataset, keyword: str, length: int) -> list[float] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return values if len(values) == length else None


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _optional_float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class InstanceStore:
    """The one place instances enter the node."""

    def __init__(self, db: Database, spool: Spool, min_free_bytes: int) -> None:
        self.db = db
        self.spool = spool
        self.min_free_bytes = min_free_bytes
        # Two senders storing the same SOP Instance UID at once must not interleave.
        self._same_uid_lock = threading.Lock()
        self.indexer = IndexWriter(db)

    # --- entry points ------------------------------------------------------------------------
    def store_dimse(
        self,
        dataset_bytes: bytes,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        calling_ae: str,
        called_ae: str,
    ) -> StoredInstance:
        """A C-STORE dataset as received (no File Meta), stored as received (no transcoding)."""
        return self._store(
            dataset_bytes, UID(transfer_syntax_uid), sop_class_uid, sop_instance_uid, calling_ae, called_ae
        )

    def store_part10(self, file_bytes: bytes, *, calling_ae: str, called_ae: str) -> StoredInstance:
        """A DICOM Part-10 file (STOW-RS, import)."""
        meta, dataset_bytes = _split_part10(file_bytes)
        return self._store(
            dataset_bytes,
            UID(meta.TransferSyntaxUID),
            str(meta.get("MediaStorageSOPClassUID", "")),
            str(meta.get("MediaStorageSOPInstanceUID", "")),
            calling_ae,
            called_ae,
        )

    def index_spool_file(self, path: Path, *, called_ae: str) -> None:
        """Index a file already durable in the spool whose rows were lost (the node died between
        answering Success and the indexer's commit). The calling AE of such an instance is unknown."""
        file_bytes = path.read_bytes()
        meta, dataset_bytes = _split_part10(file_bytes)
        header_len = len(file_bytes) - len(dataset_bytes)
        ds = parse_header(dataset_bytes, UID(meta.TransferSyntaxUID), file_bytes[:header_len])
        validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        self.indexer.submit(
            _PendingRow(ds, path, len(file_bytes), dataset_bytes, str(meta.get("MediaStorageSOPClassUID", "")),
                        str(meta.TransferSyntaxUID), "", called_ae, "new", now())
        )  # fmt: skip

    # --- the work ----------------------------------------------------------------------------
    def _store(
        self,
        dataset_bytes: bytes,
        transfer_syntax: UID,
        sop_class_hint: str,
        sop_instance_hint: str,
        calling_ae: str,
        called_ae: str,
    ) -> StoredInstance:
        if self.indexer.index_down.is_set():
            # The index server is unreachable (cluster mode): what is acknowledged must reach the index, so
            # nothing new is acknowledged until the rows held in memory are written.
            raise OutOfResourcesError("the index is unavailable; instance refused, send it again later")
        if self.spool.free_bytes() - len(dataset_bytes) < self.min_free_bytes:
            raise OutOfResourcesError(
                f"free disk below the {self.min_free_bytes // (1024 * 1024)} MB watermark; instance refused"
            )
        sop_class = validate_uid(sop_class_hint, "SOP Class UID")
        sop_uid = validate_uid(sop_instance_hint, "SOP Instance UID")

        header_bytes = encode_file_meta(
            sop_class, sop_uid, transfer_syntax, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
        )
        ds = parse_header(dataset_bytes, transfer_syntax, header_bytes, require_image=is_image_storage(sop_class))
        study_uid = validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        if validate_uid(ds.get("SOPInstanceUID"), "dataset SOPInstanceUID") != sop_uid:
            raise InvalidDatasetError("dataset SOPInstanceUID differs from the one the sender announced")
        if validate_uid(ds.get("SOPClassUID"), "dataset SOPClassUID") != sop_class:
            raise InvalidDatasetError("dataset SOPClassUID differs from the one the sender announced")

        path = self.spool.instance_path(study_uid, series_uid, sop_uid)
        received_at = now()
        with self._same_uid_lock:
            if path.exists():
                # Same SOP Instance UID again (rare): identical content is a no-op, other content
                # replaces the file and is recorded as a replacement.
                previous = path.read_bytes()
                if previous.endswith(dataset_bytes) and len(previous) == len(header_bytes) + len(dataset_bytes):
                    return StoredInstance(
                        sop_uid, series_uid, study_uid, sop_class, path, len(dataset_bytes), "identical"
                    )
                result: StoreResult = "replaced"
            else:
                result = "new"
            self.spool.write_atomically(path, [header_bytes, dataset_bytes])
        # The file is durable: the caller may answer Success now. The index rows follow on the
        # indexer thread (batched); if the node dies first, start-up indexes spool files it lacks.
        self.indexer.submit(
            _PendingRow(
                ds,
                path,
                len(header_bytes) + len(dataset_bytes),
                dataset_bytes,
                sop_class,
                str(transfer_syntax),
                calling_ae,
                called_ae,
                result,
                received_at,
            )
        )
        return StoredInstance(sop_uid, series_uid, study_uid, sop_class, path, len(dataset_bytes), result)

    def flush(self, timeout_s: float = 30) -> bool:
        """Wait until every stored instance is in the index (tests, association release, STOW-RS)."""
        return self.indexer.flush(timeout_s)

    def close(self) -> None:
        self.indexer.close()


def _split_part10(file_bytes: bytes) -> tuple[Dataset, bytes]:
    """(File Meta, dataset bytes as stored) of a Part-10 file."""
    stream = io.BytesIO(file_bytes)
    try:
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise InvalidDatasetError(f"not a DICOM Part-10 file: {exc}") from None
    if "TransferSyntaxUID" not in meta:
        raise InvalidDatasetError("File Meta has no TransferSyntaxUID")
    return meta, file_bytes[stream.tell() :]


@dataclass(frozen=True)
class _PendingRow:
    ds: Dataset
    path: Path
    size: int
    dataset_bytes: bytes
    sop_class: str
    transfer_syntax: str
    calling_ae: str
    called_ae: str
    result: StoreResult
    received_at: float


INDEX_DOWN_RETRY_S = 1.0


class IndexWriter:
    """One thread that writes index rows for stored instances, many per transaction.

    Keeps SQLite off the C-STORE critical path: a sender waits for fsync + rename, not for the index.
    """

    MAX_BATCH = 256
    ROW_ATTEMPTS = 3

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: queue.Queue[_PendingRow | None] = queue.Queue()
        self._idle = threading.Condition()
        self._outstanding = 0
        # Rows that could not be indexed at all (their files wait in the spool for start-up reconciliation).
        self.failed_rows = 0
        # Set while the index server cannot be reached: the rows wait here, retried until it is back.
        self.index_down = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="index-writer")
        self._thread.start()

    def submit(self, row: _PendingRow) -> None:
        with self._idle:
            self._outstanding += 1
        self._queue.put(row)

    def flush(self, timeout_s: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout=timeout_s)

    def close(self) -> None:
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._write(batch)
            with self._idle:
                self._outstanding -= len(batch)
                self._idle.notify_all()

    def _write(self, batch: list[_PendingRow]) -> None:
        while True:
            try:
                with self.db.transaction() as conn:
                    for row in batch:
                        _index_row(conn, row)
                if self.index_down.is_set():
                    log.info("index_available_again", instances=len(batch))
                    self.index_down.clear()
                return
            except IndexUnavailable as exc:
                # Acknowledged rows are kept and retried until the server is back (not dropped to wait for
                # the next start-up); until then the store refuses new instances (0xA700).
                if not self.index_down.is_set():
                    log.error("index_unavailable_holding_rows", instances=len(batch), reason=str(exc))
                self.index_down.set()
                if self._closing.wait(INDEX_DOWN_RETRY_S):
                    break  # stopping: the files are in the spool, start-up reconciliation indexes them
            except Exception:
                log.warning("index_batch_failed_retrying_each", instances=len(batch), exc_info=True)
                break
        # One bad row must not keep the rest of the batch out of the index (the series would look
        # complete without them, or never complete): write each on its own, retrying a busy database.
        for row in batch:
            for attempt in range(1, self.ROW_ATTEMPTS + 1):
                try:
                    with self.db.transaction() as conn:
                        _index_row(conn, row)
                    break
                except TransientIndexError as exc:
                    if attempt == self.ROW_ATTEMPTS:
                        self._row_failed(row, exc)
                    else:
                        time.sleep(0.2 * attempt)  # "database is locked" and the like
                except Exception as exc:
                    self._row_failed(row, exc)
                    break

    def _row_failed(self, row: _PendingRow, exc: Exception) -> None:
        # The file is durable in the spool; start-up reconciliation indexes it again.
        self.failed_rows += 1
        metrics.index_write_failures.inc()
        log.error(
            "index_write_failed",
            sop_instance_uid=str(row.ds.get("SOPInstanceUID", "")),
            path=str(row.path),
            reason=f"{type(exc).__name__}: {scrub_values(str(exc))}",  # library text may quote values
        )


def _index_row(conn: Connection, row: _PendingRow) -> None:
    ds = row.ds
    study = StudyRecord(
        study_uid=str(ds.StudyInstanceUID),
        patient_name=str(ds.get("PatientName", "")),
        patient_id=str(ds.get("PatientID", "")),
        accession_number=str(ds.get("AccessionNumber", "")),
        study_date=str(ds.get("StudyDate", "")),
        study_description=str(ds.get("StudyDescription", "")),
    )
    series = SeriesRecord(
        series_uid=str(ds.SeriesInstanceUID),
        modality=str(ds.get("Modality", "")),
        body_part_examined=str(ds.get("BodyPartExamined", "")),
        series_description=str(ds.get("SeriesDescription", "")),
        series_number=_optional_int(ds, "SeriesNumber"),
        attributes=routing_attributes(ds),
        calling_ae=row.calling_ae,
        called_ae=row.called_ae,
    )
    instance = InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=row.sop_class,
        transfer_syntax_uid=row.transfer_syntax,
        path=row.path,
        size_bytes=row.size,
        sha256=hashlib.sha256(row.dataset_bytes).hexdigest(),
        instance_number=_optional_int(ds, "InstanceNumber"),
        image_position=_float_list(ds, "ImagePositionPatient", 3),
        image_orientation=_float_list(ds, "ImageOrientationPatient", 6),
        slice_thickness=_optional_float(ds, "SliceThickness"),
        number_of_frames=_optional_int(ds, "NumberOfFrames"),
        images_in_acquisition=_optional_int(ds, "ImagesInAcquisition"),
        calling_ae=row.calling_ae,
        received_at=row.received_at,
    )
    index_instance(conn, study, series, instance)
