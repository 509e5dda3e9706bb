"""Studies, series and instances: what the store writes for each received instance, and what
completeness and the workers read back.

An instance arriving for a complete series re-opens it (a new generation) and supersedes its
queued and done jobs, in the same transaction as the instance's rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.index.db import Connection, Database, Row
from node.index.jobs import supersede_open_jobs
from node.index.states import SeriesState


@dataclass(frozen=True)
class StudyRecord:
    """The study's identity, kept for the worklist (never logged)."""

    study_uid: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    study_description: str


@dataclass(frozen=True)
class SeriesRecord:
    """What a new series row starts with; ``attributes`` are the routing tags (no patient identity)."""

    series_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    series_number: int | None
    attributes: dict[str, Any]
    calling_ae: str
    called_ae: str


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size_bytes: int
    sha256: str
    instance_number: int | None
    image_position: list[float] | None
    image_orientation: list[float] | None
    slice_thickness: float | None
    number_of_frames: int | None
    images_in_acquisition: int | None
    calling_ae: str
    received_at: float


def index_instance(conn: Connection, study: StudyRecord, series: SeriesRecord, instance: InstanceRecord) -> None:
    """The rows of one stored instance, inside the caller's transaction."""
    t = instance.received_at
    conn.execute(
        """INSERT INTO studies (study_uid, patient_name, patient_id, accession_number, study_date,
               study_description, first_received_at, last_received_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(study_uid) DO UPDATE SET last_received_at = CASE
               WHEN excluded.last_received_at > studies.last_received_at THEN excluded.last_received_at
               ELSE studies.last_received_at END""",
        (study.study_uid, study.patient_name, study.patient_id, study.accession_number, study.study_date,
         study.study_description, t, t),
    )  # fmt: skip
    existing = conn.execute("SELECT state FROM series WHERE series_uid = ?", (series.series_uid,)).fetchone()
    if existing is None:
        conn.execute(
            """INSERT INTO series (series_uid, study_uid, modality, body_part_examined,
                   series_description, series_number, attributes, calling_ae, called_ae, state,
                   instance_count, first_received_at, last_received_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)""",
            (series.series_uid, study.study_uid, series.modality, series.body_part_examined,
             series.series_description, series.series_number, json.dumps(series.attributes),
             series.calling_ae, series.called_ae, SeriesState.RECEIVING, t, t),
        )  # fmt: skip
    elif existing["state"] == SeriesState.COMPLETE:
        reopen_series(conn, series.series_uid, t)
    exists = conn.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (instance.sop_instance_uid,)).fetchone()
    conn.execute(
        """UPDATE series SET last_received_at = CASE WHEN last_received_at < ? THEN ? ELSE last_received_at END,
               instance_count = instance_count + ? WHERE series_uid = ?""",
        (t, t, 0 if exists else 1, series.series_uid),
    )
    ipp, iop = instance.image_position, instance.image_orientation
    conn.execute(
        """INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,
               transfer_syntax_uid, path, size_bytes, sha256, instance_number, image_position,
               image_orientation, slice_thickness, number_of_frames, images_in_acquisition,
               calling_ae, received_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(sop_instance_uid) DO UPDATE SET
               path = excluded.path, size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
               transfer_syntax_uid = excluded.transfer_syntax_uid,
               image_position = excluded.image_position,
               image_orientation = excluded.image_orientation,
               received_at = excluded.received_at,
               replaced_count = instances.replaced_count
                   + CASE WHEN excluded.sha256 <> instances.sha256 THEN 1 ELSE 0 END""",
        (instance.sop_instance_uid, series.series_uid, study.study_uid, instance.sop_class_uid,
         instance.transfer_syntax_uid, str(instance.path), instance.size_bytes, instance.sha256,
         instance.instance_number, json.dumps(ipp) if ipp else None, json.dumps(iop) if iop else None,
         instance.slice_thickness, instance.number_of_frames, instance.images_in_acquisition,
         instance.calling_ae, t),
    )  # fmt: skip


def reopen_series(conn: Connection, series_uid: str, t: float) -> None:
    """An instance arrived for a complete series: it is receiving again, its work superseded."""
    conn.execute(
        """UPDATE series SET state = ?, generation = generation + 1,
               completed_at = NULL, completion_reason = NULL WHERE series_uid = ?""",
        (SeriesState.RECEIVING, series_uid),
    )
    # A running job finds out when it finishes (the worker compares generations).
    supersede_open_jobs(conn, series_uid, "series re-opened by a late instance")


def receiving_series_quiet_since(db: Database, before: float) -> list[Row]:
    """Receiving series whose last instance arrived at or before ``before`` (whole rows)."""
    return db.query("SELECT * FROM series WHERE state = ? AND last_received_at <= ?", (SeriesState.RECEIVING, before))


def instance_geometry(db: Database, series_uid: str) -> list[dict[str, Any]]:
    """Per instance: ``image_position``, ``image_orientation`` (JSON text), ``number_of_frames``,
    ``images_in_acquisition`` — what completeness judges the volume by."""
    rows = db.query(
        """SELECT image_position, image_orientation, number_of_frames, images_in_acquisition
           FROM instances WHERE series_uid = ?""",
        (series_uid,),
    )
    return [dict(r) for r in rows]


def receiving_series_unchanged(conn: Connection, series_uid: str, last_received_at: float) -> Row | None:
    """The series row, if it is still receiving and no instance arrived since ``last_received_at``."""
    row: Row | None = conn.execute(
        "SELECT * FROM series WHERE series_uid = ? AND state = ? AND last_received_at = ?",
        (series_uid, SeriesState.RECEIVING, last_received_at),
    ).fetchone()
    return row


def mark_series_complete(conn: Connection, series_uid: str, t: float, reason: str) -> None:
    conn.execute(
        """UPDATE series SET state = ?, completed_at = ?, completion_reason = ?
           WHERE series_uid = ?""",
        (SeriesState.COMPLETE, t, reason, series_uid),
    )


def series_of_study(conn: Connection, study_uid: str) -> list[Row]:
    """Whole series rows of a study, by series UID."""
    return list(conn.execute("SELECT * FROM series WHERE study_uid = ? ORDER BY series_uid", (study_uid,)).fetchall())


def instance_paths(db: Database, series_uid: str) -> list[Path]:
    return [Path(r["path"]) for r in db.query("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))]


def known_instance_paths(db: Database) -> set[str]:
    """Spool paths of every indexed instance (start-up reconciliation indexes the others)."""
    return {str(r["path"]) for r in db.query("SELECT path FROM instances")}
