"""The job state machine in the index: queued → running → done | failed | superseded.

Every transition is one transaction that also appends a row to ``job_events``. A running job
holds a lease; a job whose lease ran out (its worker crashed or was killed) is taken again,
up to ``max_attempts``, after which it fails with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from node.index.db import Connection, Database, Row, now
from node.index.states import JobState


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    generation: int
    pipeline: str
    route: str
    destinations: tuple[str, ...]
    attempts: int

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(
            id=row["id"],
            series_uid=row["series_uid"],
            study_uid=row["study_uid"],
            generation=row["generation"],
            pipeline=row["pipeline"],
            route=row["route"],
            destinations=tuple(json.loads(row["destinations"])),
            attempts=row["attempts"],
        )


def record_transition(
    conn: Connection, job_id: int, from_state: str | None, to_state: JobState, detail: str = ""
) -> None:
    conn.execute(
        "INSERT INTO job_events (job_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
        (job_id, from_state, to_state.value, now(), detail),
    )


def queue_job(
    conn: Connection,
    *,
    series_uid: str,
    study_uid: str,
    generation: int,
    pipeline: str,
    route: str,
    destinations: list[str],
) -> int:
    """Insert a queued job inside the caller's transaction (series completion is the same change)."""
    # RETURNING, not lastrowid: the same statement on SQLite and PostgreSQL.
    job_id = int(
        conn.execute(
            """INSERT INTO jobs (series_uid, study_uid, generation, pipeline, route, destinations, state,
                   created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
            (series_uid, study_uid, generation, pipeline, route, json.dumps(destinations), JobState.QUEUED, now()),
        ).fetchone()[0]
    )
    record_transition(conn, job_id, None, JobState.QUEUED, f"route {route}")
    return job_id


def claim_next_job(db: Database, worker_id: str, lease_s: float, max_attempts: int) -> Job | None:
    """Take the oldest queued job, or a running one whose lease expired. None when idle."""
    t = now()
    with db.transaction() as conn:
        # Expired leases past their last attempt fail here, with the reason, instead of looping.
        for row in conn.execute(
            """SELECT id, attempts, lease_owner FROM jobs
               WHERE state = ? AND lease_expires_at < ? AND attempts >= ?""",
            (JobState.RUNNING, t, max_attempts),
        ).fetchall():
            reason = f"worker {row['lease_owner']} stopped during attempt {row['attempts']} of {max_attempts}"
            _mark_failed(conn, row["id"], t, reason)
            record_transition(conn, row["id"], JobState.RUNNING.value, JobState.FAILED, reason)
        row = conn.execute(
            """SELECT * FROM jobs
               WHERE state = ? OR (state = ? AND lease_expires_at < ?)
               ORDER BY id LIMIT 1""",
            (JobState.QUEUED, JobState.RUNNING, t),
        ).fetchone()
        if row is None:
            return None
        return _take(conn, row, worker_id, lease_s, t)


def _take(conn: Connection, row: Row, worker_id: str, lease_s: float, t: float) -> Job:
    """Lease a queued job (or one whose lease ran out) to ``worker_id``: one more attempt."""
    retaken = row["state"] == JobState.RUNNING.value
    conn.execute(
        """UPDATE jobs SET state = ?, attempts = attempts + 1, lease_owner = ?,
               lease_expires_at = ?, started_at = ? WHERE id = ?""",
        (JobState.RUNNING, worker_id, t + lease_s, t, row["id"]),
    )
    detail = f"worker {worker_id}" + (f"; lease of {row['lease_owner']} expired" if retaken else "")
    record_transition(conn, row["id"], row["state"], JobState.RUNNING, detail)
    claimed = conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
    return Job.from_row(claimed)


@dataclass(frozen=True)
class ClaimRefused:
    """Why a job named by a broker message was not taken: ``lease_expires_at`` is set while another
    worker holds it (the message may be a redelivery after that worker died: wait for the lease)."""

    reason: str
    lease_expires_at: float | None = None


def claim_job(db: Database, job_id: int, worker_id: str, lease_s: float, max_attempts: int) -> Job | ClaimRefused:
    """Lease the job a broker message names (cluster mode), if it is still to be run.

    A message for a job that is done, failed or superseded, or leased to a live worker, is a duplicate (a
    re-publish, a redelivery): the index, not the broker, decides who runs a job, so it runs once."""
    t = now()
    with db.transaction() as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return ClaimRefused(f"no job {job_id}")
        state = row["state"]
        if state == JobState.RUNNING.value and row["lease_expires_at"] >= t:
            return ClaimRefused(f"running on {row['lease_owner']}", float(row["lease_expires_at"]))
        if state not in (JobState.QUEUED.value, JobState.RUNNING.value):
            return ClaimRefused(f"already {state}")
        if state == JobState.RUNNING.value and row["attempts"] >= max_attempts:
            reason = f"worker {row['lease_owner']} stopped during attempt {row['attempts']} of {max_attempts}"
            _mark_failed(conn, job_id, t, reason)
            record_transition(conn, job_id, state, JobState.FAILED, reason)
            return ClaimRefused(reason)
        return _take(conn, row, worker_id, lease_s, t)


def renew_lease(db: Database, job_id: int, worker_id: str, lease_s: float) -> bool:
    """Heartbeat. False if the job is no longer ours (taken over, superseded)."""
    with db.transaction() as conn:
        cur = conn.execute(
            """UPDATE jobs SET lease_expires_at = ?
               WHERE id = ? AND lease_owner = ? AND state = ?""",
            (now() + lease_s, job_id, worker_id, JobState.RUNNING),
        )
        return cur.rowcount == 1


def finish_job_failed(db: Database, job_id: int, reason: str) -> None:
    with db.transaction() as conn:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["state"] != JobState.RUNNING.value:
            return
        _mark_failed(conn, job_id, now(), reason)
        record_transition(conn, job_id, JobState.RUNNING.value, JobState.FAILED, reason)


def study_uid_of_job(db: Database, job_id: int) -> str | None:
    """The study a job ran on (the outbox's audit message names it)."""
    rows = db.query("SELECT study_uid FROM jobs WHERE id = ?", (job_id,))
    return str(rows[0]["study_uid"]) if rows else None


def job_state_and_lease_owner(conn: Connection, job_id: int) -> Row:
    """``state`` and ``lease_owner`` of a job (the worker checks the job is still its own)."""
    row: Row = conn.execute("SELECT state, lease_owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row


def mark_job_superseded_on_finish(conn: Connection, job_id: int, t: float, result_summary: str) -> None:
    """The series changed while the job ran: its result is kept for the record, not delivered."""
    conn.execute(
        "UPDATE jobs SET state = ?, finished_at = ?, result_summary = ? WHERE id = ?",
        (JobState.SUPERSEDED, t, result_summary, job_id),
    )


def mark_job_done(conn: Connection, job_id: int, t: float, result_summary: str, reason: str | None) -> None:
    conn.execute(
        """UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL, result_summary = ?,
               reason = ? WHERE id = ?""",
        (JobState.DONE, t, result_summary, reason, job_id),
    )


def running_jobs_of_worker(db: Database, worker_id: str) -> list[Row]:
    """``id`` and ``started_at`` of the jobs a worker holds (the supervisor's timeout and crash checks)."""
    return db.query(
        "SELECT id, started_at FROM jobs WHERE state = ? AND lease_owner = ?", (JobState.RUNNING, worker_id)
    )


def requeue_running_jobs(db: Database, detail: str) -> int:
    """At start-up: jobs running when the node last stopped belong to workers that no longer exist."""
    with db.transaction() as conn:
        rows = conn.execute("SELECT id, lease_owner FROM jobs WHERE state = ?", (JobState.RUNNING,)).fetchall()
        for row in rows:
            conn.execute(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                (JobState.QUEUED, row["id"]),
            )
            record_transition(conn, row["id"], JobState.RUNNING.value, JobState.QUEUED, detail)
    return len(rows)


def open_job_count_of_study(conn: Connection, study_uid: str) -> int:
    """Queued or running jobs of a study."""
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE study_uid = ? AND state IN (?, ?)",
            (study_uid, JobState.QUEUED, JobState.RUNNING),
        ).fetchone()[0]
    )


def series_generation(conn: Connection, series_uid: str) -> int:
    row = conn.execute("SELECT generation FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
    return int(row["generation"]) if row else 0


def supersede_open_jobs(conn: Connection, series_uid: str, detail: str) -> None:
    """Queued and done work of a series that just re-opened no longer describes it."""
    for job in conn.execute(
        "SELECT id, state FROM jobs WHERE series_uid = ? AND state IN (?, ?)",
        (series_uid, JobState.QUEUED, JobState.DONE),
    ).fetchall():
        conn.execute("UPDATE jobs SET state = ? WHERE id = ?", (JobState.SUPERSEDED, job["id"]))
        record_transition(conn, job["id"], job["state"], JobState.SUPERSEDED, detail)


def _mark_failed(conn: Connection, job_id: int, t: float, reason: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = ?, finished_at = ?, reason = ?, lease_owner = NULL WHERE id = ?",
        (JobState.FAILED, t, reason, job_id),
    )
