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
        """INSERT OR IGNORE INTO deliveries (job_id, result_sop_instance_uid, destination,
               state, next_attempt_at, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
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


def due_deliveries(db: Database, t: float, limit: int) -> list[Row]:
    """Pending or retry deliveries due by ``t``, oldest first: ``id``, ``destination``, ``attempts`` and the
    result's ``path`` and ``sop_instance_uid``."""
    return db.query(
        """SELECT d.id, d.destination, d.attempts, r.path, r.sop_instance_uid
           FROM deliveries d JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
           WHERE d.state IN (?, ?) AND d.next_attempt_at <= ?
           ORDER BY d.id LIMIT ?""",
        (DeliveryState.PENDING, DeliveryState.RETRY, t, limit),
    )


def set_next_attempt(conn: Connection, delivery_id: int, at: float) -> None:
    conn.execute("UPDATE deliveries SET next_attempt_at = ? WHERE id = ?", (at, delivery_id))


def count_attempt(conn: Connection, delivery_id: int) -> None:
    conn.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?", (delivery_id,))


def mark_sent_at(conn: Connection, delivery_id: int, t: float) -> None:
    conn.execute("UPDATE deliveries SET sent_at = ?, last_error = NULL WHERE id = ?", (t, delivery_id))


def set_last_error(conn: Connection, delivery_id: int, error: str) -> None:
    conn.execute("UPDATE deliveries SET last_error = ? WHERE id = ?", (error[:2000], delivery_id))


def schedule_retry(conn: Connection, delivery_id: int, at: float, error: str) -> None:
    conn.execute(
        "UPDATE deliveries SET next_attempt_at = ?, last_error = ? WHERE id = ?", (at, error[:2000], delivery_id)
    )


def reset_for_operator_retry(conn: Connection, delivery_id: int, t: float) -> None:
    """Attempts start again from zero, due now."""
    conn.execute(
        "UPDATE deliveries SET attempts = 0, next_attempt_at = ?, last_error = NULL WHERE id = ?", (t, delivery_id)
    )
