"""Read-only views of the index for the JSON API, the metrics, the worklist, the CLI and the demo.

Filters are whitelisted columns bound as parameters; nothing from a request is pasted into SQL.
Patient identity is only in ``studies`` (read here for the worklist alone, see node/api/worklist.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from node.index.db import Database, Row
from node.index.states import DeliveryState, JobState

MAX_LIMIT = 500


def page(
    db: Database, sql_from: str, filters: dict[str, object], order: str, limit: int, offset: int, columns: str = "*"
) -> dict[str, Any]:
    """``{"total", "limit", "offset", "items"}`` for ``SELECT columns FROM sql_from WHERE filters``."""
    clauses = [f"{column} = ?" for column, value in filters.items() if value is not None]
    params = tuple(value for value in filters.values() if value is not None)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    total = db.query(f"SELECT COUNT(*) AS n FROM {sql_from} {where}", params)[0]["n"]
    rows = db.query(
        f"SELECT {columns} FROM {sql_from} {where} ORDER BY {order} LIMIT ? OFFSET ?", (*params, limit, offset)
    )
    return {"total": total, "limit": limit, "offset": offset, "items": [dict(r) for r in rows]}


def list_series(db: Database, *, state: str | None, study_uid: str | None, limit: int, offset: int) -> dict[str, Any]:
    result = page(
        db,
        "series",
        {"state": state, "study_uid": study_uid},
        "last_received_at DESC, series_uid",
        limit,
        offset,
        columns="""series_uid, study_uid, modality, body_part_examined, series_description, series_number,
                   calling_ae, state, generation, instance_count, first_received_at, last_received_at,
                   completed_at, completion_reason""",
    )
    return result


def list_jobs(
    db: Database,
    *,
    state: str | None,
    pipeline: str | None,
    study_uid: str | None,
    series_uid: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    result = page(
        db,
        "jobs",
        {"state": state, "pipeline": pipeline, "study_uid": study_uid, "series_uid": series_uid},
        "id DESC",
        limit,
        offset,
        columns="""id, series_uid, study_uid, generation, pipeline, route, destinations, state, attempts,
                   created_at, started_at, finished_at, reason, result_summary""",
    )
    for item in result["items"]:
        _decode_job(item)
    return result


def get_job(db: Database, job_id: int) -> dict[str, Any] | None:
    rows = db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
    if not rows:
        return None
    job = _decode_job(dict(rows[0]))
    job.pop("lease_owner", None)
    job.pop("lease_expires_at", None)
    job["events"] = [
        dict(r)
        for r in db.query(
            "SELECT from_state, to_state, at, detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
        )
    ]
    job["results"] = [
        dict(r) for r in db.query("SELECT sop_instance_uid, kind, created_at FROM results WHERE job_id = ?", (job_id,))
    ]
    return job


def _decode_job(item: dict[str, Any]) -> dict[str, Any]:
    item["destinations"] = json.loads(item["destinations"] or "[]")
    try:
        item["result_summary"] = json.loads(item["result_summary"]) if item["result_summary"] else None
    except ValueError:
        item["result_summary"] = None
    return item


def list_deliveries(
    db: Database, *, state: str | None, destination: str | None, job_id: int | None, limit: int, offset: int
) -> dict[str, Any]:
    return page(
        db,
        "deliveries",
        {"state": state, "destination": destination, "job_id": job_id},
        "id DESC",
        limit,
        offset,
        columns="""id, job_id, result_sop_instance_uid, destination, state, attempts, next_attempt_at, last_error,
                   created_at, updated_at, sent_at""",
    )


def get_delivery(db: Database, delivery_id: int) -> dict[str, Any] | None:
    rows = db.query("SELECT * FROM deliveries WHERE id = ?", (delivery_id,))
    if not rows:
        return None
    item = dict(rows[0])
    item["events"] = [
        dict(r)
        for r in db.query(
            "SELECT from_state, to_state, at, detail FROM delivery_events WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
    ]
    return item


# --- metrics and `ainode status` ------------------------------------------------------------------------
def counts_by_state(db: Database, table: str) -> dict[str, int]:
    """``{state: rows}`` of ``jobs``, ``deliveries`` or ``series`` (states with no row are absent)."""
    if table not in ("jobs", "deliveries", "series"):
        raise ValueError(f"no state column in {table!r}")
    return {r["state"]: r["n"] for r in db.query(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state")}


def study_count(db: Database) -> int:
    return int(db.query("SELECT COUNT(*) AS n FROM studies")[0]["n"])


def oldest_queued_job_created_at(db: Database) -> float | None:
    t = db.query("SELECT MIN(created_at) AS t FROM jobs WHERE state = ?", (JobState.QUEUED,))[0]["t"]
    return None if t is None else float(t)


def job_duration_histogram(db: Database, buckets: tuple[float, ...]) -> list[Row]:
    """Finished jobs by (``pipeline``, ``outcome`` failed|done): ``n``, ``total`` seconds, and ``b0``..
    the count at or under each bucket bound."""
    bucket_sql = ", ".join(f"SUM(CASE WHEN d <= {float(b)!r} THEN 1 ELSE 0 END) AS b{i}" for i, b in enumerate(buckets))
    return db.query(
        f"""SELECT pipeline, outcome, COUNT(*) AS n, SUM(d) AS total, {bucket_sql}
            FROM (SELECT pipeline, CASE WHEN state = ? THEN 'failed' ELSE 'done' END AS outcome,
                         MAX(finished_at - started_at, 0) AS d
                  FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL)
            GROUP BY pipeline, outcome""",
        (JobState.FAILED,),
    )


def series_overview(db: Database) -> list[dict[str, Any]]:
    """Every series, newest first, without patient identity (`ainode status`)."""
    rows = db.query(
        """SELECT series_uid, study_uid, modality, series_description, state, generation, instance_count,
                  completion_reason, calling_ae FROM series ORDER BY first_received_at DESC"""
    )
    return [dict(r) for r in rows]


def recent_jobs(db: Database, limit: int) -> list[dict[str, Any]]:
    rows = db.query(
        "SELECT id, series_uid, pipeline, state, attempts, reason FROM jobs ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [dict(r) for r in rows]


def oldest_unsent_delivery_by_destination(db: Database) -> dict[str, float]:
    """``{destination: created_at}`` of its oldest delivery not yet sent (pending, retry or sending)."""
    rows = db.query(
        """SELECT destination, MIN(created_at) AS t FROM deliveries
           WHERE state IN (?, ?, ?) GROUP BY destination""",
        (DeliveryState.PENDING, DeliveryState.RETRY, DeliveryState.SENDING),
    )
    return {str(r["destination"]): float(r["t"]) for r in rows}


def all_deliveries(db: Database) -> list[dict[str, Any]]:
    """Every delivery row, oldest first (harnesses and tests that follow one run)."""
    return [dict(r) for r in db.query("SELECT * FROM deliveries ORDER BY id")]


def deliveries_with_kind(db: Database, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Newest deliveries with their result's kind (SEG, SR, SC), optionally of one state (`ainode deliveries`)."""
    where, params = ("WHERE d.state = ?", (state,)) if state else ("", ())
    rows = db.query(
        f"""SELECT d.id, d.job_id, d.destination, d.state, d.attempts, d.last_error, r.kind,
                   d.result_sop_instance_uid, d.waiting_since
            FROM deliveries d JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
            {where} ORDER BY d.id DESC LIMIT ?""",
        (*params, limit),
    )
    return [dict(r) for r in rows]


# --- the worklist -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorklistRows:
    """What the worklist is built from: studies (with identity), their series, current jobs, deliveries."""

    studies: list[Row]
    series: list[Row]
    current_jobs: list[Row]
    deliveries: list[Row]


def worklist_rows(db: Database, study_uid: str | None = None) -> WorklistRows:
    """All studies (or one). A study's *current* jobs are, per (series, pipeline), the newest job of the
    series' current generation that was not superseded."""
    where, params = ("WHERE study_uid = ?", (study_uid,)) if study_uid else ("", ())
    studies = db.query(f"SELECT * FROM studies {where} ORDER BY last_received_at DESC, study_uid", params)
    series = db.query(
        f"""SELECT series_uid, study_uid, modality, series_description, series_number, state, generation,
                   instance_count, last_received_at, completed_at FROM series {where}""",
        params,
    )
    job_where = "AND j.study_uid = ?" if study_uid else ""
    jobs = db.query(
        f"""SELECT j.id, j.series_uid, j.study_uid, j.pipeline, j.state, j.reason, j.created_at, j.started_at,
                   j.finished_at, j.result_summary, j.attempts
            FROM jobs j JOIN series s ON s.series_uid = j.series_uid AND s.generation = j.generation
            WHERE j.id IN (SELECT MAX(id) FROM jobs WHERE state != ?
                           GROUP BY series_uid, generation, pipeline)
            {job_where} ORDER BY j.id""",
        (JobState.SUPERSEDED, *params),
    )
    deliveries = db.query(
        f"""SELECT d.id, d.state, d.destination, d.last_error, d.job_id, d.waiting_since, j.study_uid
            FROM deliveries d JOIN jobs j ON j.id = d.job_id WHERE 1 {job_where}""",
        params,
    )
    return WorklistRows(studies, series, jobs, deliveries)


# --- the demo and the test harness (demo/) ----------------------------------------------------------
def jobs_of_study(db: Database, study_uid: str) -> list[Row]:
    """``id``, ``state``, ``reason`` of every job of a study."""
    return db.query("SELECT id, state, reason FROM jobs WHERE study_uid = ?", (study_uid,))


def deliveries_of_study(db: Database, study_uid: str) -> list[Row]:
    """``job_id``, ``state``, ``last_error`` of every delivery of a study's jobs."""
    return db.query(
        """SELECT d.job_id, d.state, d.last_error FROM deliveries d JOIN jobs j ON j.id = d.job_id
           WHERE j.study_uid = ?""",
        (study_uid,),
    )


def superseded_job_count(db: Database, study_uid: str) -> int:
    return int(
        db.query("SELECT COUNT(*) AS n FROM jobs WHERE study_uid = ? AND state = ?", (study_uid, JobState.SUPERSEDED))[
            0
        ]["n"]
    )


def latest_done_job_timeline(db: Database, study_uid: str) -> Row | None:
    """The newest done job of a study with its series' receive/complete times and its last delivery's
    ``sent_at``: where the demo's stage timings come from."""
    rows = db.query(
        """SELECT s.first_received_at, s.last_received_at, s.completed_at, s.completion_reason,
                  j.started_at, j.finished_at, j.result_summary,
                  (SELECT MAX(sent_at) FROM deliveries d WHERE d.job_id = j.id) AS sent_at
           FROM jobs j JOIN series s ON s.series_uid = j.series_uid
           WHERE j.study_uid = ? AND j.state = ? ORDER BY j.id DESC LIMIT 1""",
        (study_uid, JobState.DONE),
    )
    return rows[0] if rows else None


def series_row(db: Database, series_uid: str) -> dict[str, Any] | None:
    rows = db.query("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
    return dict(rows[0]) if rows else None


def jobs_of_series(db: Database, series_uid: str) -> list[dict[str, Any]]:
    """Whole job rows of a series, oldest first."""
    return [dict(r) for r in db.query("SELECT * FROM jobs WHERE series_uid = ? ORDER BY id", (series_uid,))]
