"""Read-only listings of the index for the JSON API: series, jobs, deliveries, with filters and paging.

Filters are whitelisted columns bound as parameters; nothing from the request is pasted into SQL.
Patient identity is not in these tables (studies holds it; see worklist.py).
"""

from __future__ import annotations

import json
from typing import Any

from node.store.db import Database

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
