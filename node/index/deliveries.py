"""The outbox's rows: one delivery per (result object, destination), and the trail of its states.

The states are :class:`~node.index.states.DeliveryState`; the outbox (``node/export/outbox.py``)
decides the transitions, these functions store them.
"""

from __future__ import annotations

from node.index.db import Connection, Database, Row, now
from node.index.states import DeliveryState


def queue_delivery(conn: Connection, job_id: int, result_sop_instance_uid: str, destination: str, t: float) -> None:
    """A pending delivery of a result to a destination (once: a retaken job does not queue it twice)."""
    conn.execute(
        """INSERT INTO deliveries (job_id, result_sop_instance_uid, destination,
               state, next_attempt_at, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
        (job_id, result_sop_instance_uid, destination, DeliveryState.PENDING, t, t, t),
    )


def record_transition(
    conn: Connection, delivery_id: int, from_state: str | None, to_state: DeliveryState, detail: str
) -> None:
    """Set the state and append the event; ``from_state`` None: read the current one first."""
    if from_state is None:
        from_state = delivery_state(conn, delivery_id)
    t = now()
    conn.execute("UPDATE deliveries SET state = ?, updated_at = ? WHERE id = ?", (to_state, t, delivery_id))
    conn.execute(
        "INSERT INTO delivery_events (delivery_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
        (delivery_id, from_state, to_state, t, detail[:2000]),
    )


def delivery_state(conn: Connection, delivery_id: int) -> str | None:
    """The delivery's state, None when there is no such delivery."""
    row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    return None if row is None else str(row["state"])


def delivery_attempts(conn: Connection, delivery_id: int) -> int:
    return int(conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0])


def interrupted_delivery_ids(conn: Connection) -> list[int]:
    """Deliveries left 'sending' (by a process that died mid-send)."""
    rows = conn.execute("SELECT id FROM deliveries WHERE state = ?", (DeliveryState.SENDING,)).fetchall()
    return [int(r["id"]) for r in rows]


def set_next_attempt(conn: Connection, delivery_id: int, at: float) -> None:
    conn.execute("UPDATE deliveries SET next_attempt_at = ? WHERE id = ?", (at, delivery_id))


def count_attempt(conn: Connection, delivery_id: int) -> None:
    conn.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?", (delivery_id,))


def mark_sent_at(conn: Connection, delivery_id: int, t: float) -> None:
    conn.execute(
        "UPDATE deliveries SET sent_at = ?, last_error = NULL, waiting_since = NULL WHERE id = ?", (t, delivery_id)
    )


def set_last_error(conn: Connection, delivery_id: int, error: str) -> None:
    conn.execute("UPDATE deliveries SET last_error = ? WHERE id = ?", (error[:2000], delivery_id))


def schedule_retry(conn: Connection, delivery_id: int, at: float, error: str, waiting_since: float) -> None:
    """Due again at ``at``; ``waiting_since``: when its failures began (the dead-letter decision goes by age)."""
    conn.execute(
        "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, waiting_since = ? WHERE id = ?",
        (at, error[:2000], waiting_since, delivery_id),
    )


def reset_for_operator_retry(conn: Connection, delivery_id: int, t: float) -> None:
    """Attempts start again from zero, due now, no longer waiting."""
    conn.execute(
        """UPDATE deliveries SET attempts = 0, next_attempt_at = ?, last_error = NULL, waiting_since = NULL
           WHERE id = ?""",
        (t, delivery_id),
    )


# --- result sets and destinations that are down (issue 16) ----------------------------------------
_WAITING = (DeliveryState.PENDING, DeliveryState.RETRY)
# Deliveries an outbox may take for sending.
WAITING_STATES = frozenset(_WAITING)


def delivery_destination(conn: Connection, delivery_id: int) -> str:
    return str(conn.execute("SELECT destination FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0])


def destinations_with_waiting_deliveries(db: Database) -> set[str]:
    """Destinations that have pending or retry deliveries (due or not)."""
    rows = db.query("SELECT DISTINCT destination FROM deliveries WHERE state IN (?, ?)", _WAITING)
    return {str(r["destination"]) for r in rows}


def waiting_delivery_ids(conn: Connection, destination: str) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM deliveries WHERE destination = ? AND state IN (?, ?)", (destination, *_WAITING)
    ).fetchall()
    return [int(r["id"]) for r in rows]


def release_waiting(conn: Connection, destination: str, t: float) -> int:
    """The destination is back: everything that waited for it is due at ``t``. Returns how many."""
    cursor = conn.execute(
        "UPDATE deliveries SET next_attempt_at = ? WHERE destination = ? AND state IN (?, ?)",
        (t, destination, *_WAITING),
    )
    return int(cursor.rowcount)


_TO_MARK_WAITING = """SELECT id, state, waiting_since FROM deliveries
    WHERE destination = ? AND state IN (?, ?)
      AND (state = ? OR waiting_since IS NULL OR waiting_since <= ?)"""


def _to_mark_waiting_params(destination: str, waited_before: float) -> tuple[object, ...]:
    return (destination, *_WAITING, DeliveryState.PENDING, waited_before)


def any_to_mark_waiting(db: Database, destination: str, waited_before: float) -> bool:
    """Read-only check (no write lock): does :func:`to_mark_waiting` have rows?"""
    return bool(db.query(_TO_MARK_WAITING, _to_mark_waiting_params(destination, waited_before)))


def to_mark_waiting(conn: Connection, destination: str, waited_before: float) -> list[Row]:
    """Deliveries of a down destination that are new (pending), not yet waiting, or waiting since before
    ``waited_before`` (candidates for the dead letter): ``id``, ``state``, ``waiting_since``."""
    return list(conn.execute(_TO_MARK_WAITING, _to_mark_waiting_params(destination, waited_before)).fetchall())


def start_waiting(conn: Connection, delivery_id: int, t: float, reason: str, next_attempt_at: float) -> None:
    """The delivery waits for its destination (since ``t`` unless it already waited)."""
    conn.execute(
        """UPDATE deliveries SET waiting_since = COALESCE(waiting_since, ?), last_error = ?, next_attempt_at = ?
           WHERE id = ?""",
        (t, reason[:2000], next_attempt_at, delivery_id),
    )


def jobs_with_due_deliveries(db: Database, destination: str, t: float, limit: int) -> list[int]:
    """Jobs (oldest first) with a delivery to ``destination`` due by ``t``: each is one result set."""
    rows = db.query(
        """SELECT DISTINCT job_id FROM deliveries
           WHERE destination = ? AND state IN (?, ?) AND next_attempt_at <= ?
           ORDER BY job_id LIMIT ?""",
        (destination, *_WAITING, t, limit),
    )
    return [int(r["job_id"]) for r in rows]


def waiting_set(db: Database, job_id: int, destination: str) -> list[Row]:
    """The job's waiting deliveries to ``destination``: ``id``, ``waiting_since``, the result's ``path``, ``kind``."""
    return db.query(
        """SELECT d.id, d.waiting_since, r.path, r.kind
           FROM deliveries d JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
           WHERE d.job_id = ? AND d.destination = ? AND d.state IN (?, ?)""",
        (job_id, destination, *_WAITING),
    )
