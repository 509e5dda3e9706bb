"""``withdrawals``: superseded result objects a destination's ``superseded`` policy withdraws (issue 11).

One row per (superseded result object, destination), written in the same transaction as its rejection note or
its deletion order, so nothing is withdrawn twice. What is due and what to do is decided by
``node/export/superseded.py``; these functions store it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from node.index import deliveries, results
from node.index.db import Connection, Database, Row
from node.index.states import DeliveryState, JobState, WithdrawalMethod, WithdrawalState


def superseded_sent_objects(db: Database, destinations: Sequence[str], note_kind: str) -> list[Row]:
    """Result objects sent to one of ``destinations`` and not yet withdrawn there, with the newest done job of
    the same series and pipeline that came after theirs (``newest``, None when nothing supersedes them):
    ``sop_instance_uid``, ``path``, ``destination``, ``newest``. Rejection notes (``note_kind``) are left out."""
    marks = ",".join("?" * len(destinations))
    return db.query(
        f"""SELECT r.sop_instance_uid, r.path, d.destination,
                   (SELECT MAX(n.id) FROM jobs n WHERE n.series_uid = j.series_uid AND n.pipeline = j.pipeline
                        AND n.state = ? AND n.id > j.id) AS newest
            FROM deliveries d
            JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
            JOIN jobs j ON j.id = r.job_id
            LEFT JOIN withdrawals w ON w.result_sop_instance_uid = r.sop_instance_uid AND w.destination = d.destination
            WHERE d.state = ? AND r.kind != ? AND w.id IS NULL AND d.destination IN ({marks})
            ORDER BY r.sop_instance_uid""",
        (JobState.DONE, DeliveryState.SENT, note_kind, *destinations),
    )


def job_results_all_sent(db: Database, job_id: int, destination: str, note_kind: str) -> bool:
    """Every result of the job (notes aside) reached the destination."""
    row = db.query(
        """SELECT COUNT(*) AS total, COALESCE(SUM(d.state = ?), 0) AS sent
           FROM deliveries d JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
           WHERE d.job_id = ? AND d.destination = ? AND r.kind != ?""",
        (DeliveryState.SENT, job_id, destination, note_kind),
    )[0]
    return int(row["total"]) > 0 and int(row["sent"]) == int(row["total"])


def record_note(
    conn: Connection, job_id: int, note_uid: str, note_kind: str, path: Path, destination: str, t: float
) -> None:
    """A rejection note is a result of the newer job, with one delivery to the destination it withdraws from."""
    results.record_result(conn, note_uid, job_id, note_kind, path, t)
    deliveries.queue_delivery(conn, job_id, note_uid, destination, t)


def insert_withdrawals(
    conn: Connection,
    *,
    job_id: int,
    destination: str,
    method: WithdrawalMethod,
    sop_instance_uids: Iterable[str],
    state: WithdrawalState,
    note_uid: str | None,
    error: str | None,
    t: float,
) -> int:
    """One row per object (an object already withdrawn from that destination is skipped); how many were new."""
    inserted = 0
    for uid in sop_instance_uids:
        cur = conn.execute(
            """INSERT INTO withdrawals (result_sop_instance_uid, destination, superseding_job_id, method,
                   note_sop_instance_uid, state, next_attempt_at, last_error, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
            (uid, destination, job_id, method, note_uid, state, t, error, t, t),
        )
        inserted += int(cur.rowcount)
    return inserted


def due_deletions(db: Database, t: float, limit: int) -> list[Row]:
    """Deletions due by ``t``, oldest first: ``id``, ``result_sop_instance_uid``, ``destination``."""
    return db.query(
        """SELECT id, result_sop_instance_uid, destination FROM withdrawals
           WHERE method = ? AND state IN (?, ?) AND next_attempt_at <= ?
           ORDER BY id LIMIT ?""",
        (WithdrawalMethod.DELETE, WithdrawalState.PENDING, WithdrawalState.RETRY, t, limit),
    )


def count_withdrawal_attempt(conn: Connection, withdrawal_id: int, t: float) -> Row:
    """One more attempt; returns the row's ``attempts`` (after counting) and ``created_at``."""
    conn.execute("UPDATE withdrawals SET attempts = attempts + 1, updated_at = ? WHERE id = ?", (t, withdrawal_id))
    row: Row = conn.execute("SELECT attempts, created_at FROM withdrawals WHERE id = ?", (withdrawal_id,)).fetchone()
    return row


def mark_withdrawal_deleted(conn: Connection, withdrawal_id: int) -> None:
    conn.execute(
        "UPDATE withdrawals SET state = ?, last_error = NULL WHERE id = ?", (WithdrawalState.DELETED, withdrawal_id)
    )


def mark_withdrawal_dead(conn: Connection, withdrawal_id: int, why: str) -> None:
    conn.execute(
        "UPDATE withdrawals SET state = ?, last_error = ? WHERE id = ?",
        (WithdrawalState.DEAD, why[:2000], withdrawal_id),
    )


def schedule_withdrawal_retry(conn: Connection, withdrawal_id: int, at: float, error: str) -> None:
    conn.execute(
        "UPDATE withdrawals SET state = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
        (WithdrawalState.RETRY, at, error[:2000], withdrawal_id),
    )


def withdrawal_counts(db: Database) -> dict[str, int]:
    """``{"reject noted": n, "delete dead": m, ...}`` (``ainode status``)."""
    rows = db.query("SELECT method, state, COUNT(*) AS n FROM withdrawals GROUP BY method, state")
    return {f"{r['method']} {r['state']}": int(r["n"]) for r in rows}
