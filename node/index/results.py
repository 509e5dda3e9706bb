"""DICOM objects a job produced (SEG, SR, SC), kept in the spool's results folder."""

from __future__ import annotations

from pathlib import Path

from node.index.db import Connection, Database
from node.index.states import JobState


def record_result(conn: Connection, sop_instance_uid: str, job_id: int, kind: str, path: Path, t: float) -> None:
    """A job's output object. The same UID again (a retaken job makes the same UIDs) points at the new file."""
    conn.execute(
        """INSERT INTO results (sop_instance_uid, job_id, kind, path, created_at)
           VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(sop_instance_uid) DO UPDATE SET job_id = excluded.job_id,
               path = excluded.path""",
        (sop_instance_uid, job_id, kind, str(path), t),
    )


def earlier_report_paths(db: Database, series_uid: str, pipeline: str, before_job_id: int) -> list[Path]:
    """Files of the SRs earlier jobs of this series and pipeline made (newer results supersede them)."""
    rows = db.query(
        """SELECT r.path FROM results r JOIN jobs j ON j.id = r.job_id
           WHERE j.series_uid = ? AND j.pipeline = ? AND j.id < ? AND r.kind = 'SR'""",
        (series_uid, pipeline, before_job_id),
    )
    return [Path(r["path"]) for r in rows]


def latest_report_path(db: Database, series_uid: str, pipeline: str) -> Path | None:
    """The SR of the newest finished job of this series and pipeline (a prior the node analysed), if any."""
    rows = db.query(
        """SELECT r.path FROM results r JOIN jobs j ON j.id = r.job_id
           WHERE j.series_uid = ? AND j.pipeline = ? AND r.kind = 'SR' AND j.state = ?
           ORDER BY j.id DESC LIMIT 1""",
        (series_uid, pipeline, JobState.DONE.value),
    )
    return Path(rows[0]["path"]) if rows else None
