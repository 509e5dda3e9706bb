"""The outbox: one delivery row per (result object, destination), driven to 'sent' or 'dead'.

States: pending → sending → sent | retry (transient failure, a backoff later) | dead (permanent
failure, or retries exhausted; with the reason, at once — no retry storm against a PACS that
said no). A delivery found 'sending' at start-up was interrupted by a crash: it goes back to
retry. Re-sending reuses the same file and so the same SOP Instance UID, so the PACS ends up
with one copy whatever happens.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import structlog

from node.errors import DeliveryError
from node.export.backoff import RetryPolicy, next_retry_delay
from node.export.destinations import Destination, FileOutcome
from node.export.superseded import WithdrawalPolicy, delete_due, plan_withdrawals
from node.store.db import Database, now

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Due:
    id: int
    destination: str
    path: Path


class Outbox:
    def __init__(
        self,
        db: Database,
        destinations: dict[str, Destination],
        policy: RetryPolicy,
        *,
        batch_size: int = 64,
        rng: random.Random | None = None,
        withdrawals: dict[str, WithdrawalPolicy] | None = None,
        results_root: Path | None = None,
    ) -> None:
        """``withdrawals``: the destinations whose superseded results are withdrawn (node/export/superseded.py),
        with ``results_root``, the spool folder where rejection notes are written."""
        if withdrawals and results_root is None:
            raise ValueError("withdrawals need the results_root to write rejection notes in")
        self.db = db
        self.destinations = destinations
        self.policy = policy
        self.batch_size = batch_size
        self.rng = rng or random.Random()
        self.withdrawals = withdrawals or {}
        self.results_root = results_root
        # Withdrawals become due only when a delivery is sent: plan at start, then after a pass that sent one.
        self._plan_withdrawals = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, interval_s: float) -> None:
        self.recover_interrupted()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True, name="outbox")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                busy = self.deliver_due() + self.withdraw_superseded()
            except Exception:
                log.exception("outbox_pass_failed")
                busy = 0
            if not busy:
                self._stop.wait(interval_s)

    def recover_interrupted(self) -> int:
        """'sending' rows belong to a process that died mid-send: send them again."""
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT id FROM deliveries WHERE state = 'sending'").fetchall()
            for row in rows:
                self._transition(conn, row["id"], "sending", "retry", "node restarted during the send")
                conn.execute("UPDATE deliveries SET next_attempt_at = ? WHERE id = ?", (now(), row["id"]))
        return len(rows)

    # --- one pass --------------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """Send what is due, one batch per destination. Returns how many deliveries were attempted."""
        t = now()
        due = self.db.query(
            """SELECT d.id, d.destination, d.attempts, r.path, r.sop_instance_uid
               FROM deliveries d JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
               WHERE d.state IN ('pending', 'retry') AND d.next_attempt_at <= ?
               ORDER BY d.id LIMIT ?""",
            (t, self.batch_size * 4),
        )
        by_destination: dict[str, list[_Due]] = defaultdict(list)
        for row in due:
            if len(by_destination[row["destination"]]) < self.batch_size:
                by_destination[row["destination"]].append(_Due(row["id"], row["destination"], Path(row["path"])))
        attempted = 0
        for name, rows in by_destination.items():
            attempted += len(rows)
            self._deliver_batch(name, rows)
        return attempted

    def withdraw_superseded(self) -> int:
        """Plan what newly delivered results supersede, and carry out due deletions. Rejection notes it plans
        are ordinary deliveries, sent by the next ``deliver_due``. Returns planned + attempted."""
        if not self.withdrawals or self.results_root is None:
            return 0
        planned = 0
        if self._plan_withdrawals:
            planned = plan_withdrawals(self.db, self.withdrawals, self.results_root)
            self._plan_withdrawals = False
        return planned + delete_due(self.db, self.destinations, self.policy, self.rng, batch_size=self.batch_size)

    def _deliver_batch(self, name: str, rows: list[_Due]) -> None:
        bound = log.bind(destination=name)
        destination = self.destinations.get(name)
        if destination is None:
            self._finish_all(rows, permanent=True, reason=f"destination {name!r} is not configured")
            return
        with self.db.transaction() as conn:
            for row in rows:
                self._transition(conn, row.id, None, "sending", "")
                conn.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?", (row.id,))
        paths = [row.path for row in rows]
        try:
            report = destination.send(paths)
        except DeliveryError as exc:
            bound.warning("delivery_failed", files=len(rows), permanent=exc.permanent, reason=str(exc))
            self._finish_all(rows, permanent=exc.permanent, reason=str(exc))
            return
        except Exception as exc:  # a transport bug must not kill the outbox thread; retry later
            bound.exception("delivery_crashed", files=len(rows))
            self._finish_all(rows, permanent=False, reason=f"{type(exc).__name__}: {exc}")
            return
        outcome_by_path: dict[Path, FileOutcome] = {o.path: o for o in report.outcomes}
        with self.db.transaction() as conn:
            for row in rows:
                outcome = outcome_by_path.get(row.path)
                if outcome is not None and outcome.delivered:
                    self._transition(conn, row.id, "sending", "sent", outcome.detail)
                    conn.execute("UPDATE deliveries SET sent_at = ?, last_error = NULL WHERE id = ?", (now(), row.id))
                else:
                    detail = outcome.detail if outcome else "no outcome reported by the destination"
                    permanent = bool(outcome.permanent) if outcome else False
                    self._fail(conn, row, permanent, detail)
        if report.delivered:
            self._plan_withdrawals = True
        bound.info("delivery_batch", sent=len(report.delivered), failed=len(report.failed))

    def _finish_all(self, rows: list[_Due], *, permanent: bool, reason: str) -> None:
        with self.db.transaction() as conn:
            for row in rows:
                self._fail(conn, row, permanent, reason)

    def _fail(self, conn: sqlite3.Connection, row: _Due, permanent: bool, reason: str) -> None:
        delivery_id = row.id
        attempts = int(conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0])
        delay = None if permanent else next_retry_delay(attempts, self.policy, self.rng)
        if delay is None:
            why = reason if permanent else f"gave up after {attempts} attempts: {reason}"
            self._transition(conn, delivery_id, None, "dead", why)
            conn.execute("UPDATE deliveries SET last_error = ? WHERE id = ?", (why[:2000], delivery_id))
            log.error("delivery_dead", delivery_id=delivery_id, destination=row.destination, reason=why)
        else:
            self._transition(conn, delivery_id, None, "retry", f"retry in {delay:.1f} s: {reason}")
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, last_error = ? WHERE id = ?",
                (now() + delay, reason[:2000], delivery_id),
            )

    @staticmethod
    def _transition(
        conn: sqlite3.Connection, delivery_id: int, from_state: str | None, to_state: str, detail: str
    ) -> None:
        if from_state is None:
            from_state = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]
        t = now()
        conn.execute("UPDATE deliveries SET state = ?, updated_at = ? WHERE id = ?", (to_state, t, delivery_id))
        conn.execute(
            "INSERT INTO delivery_events (delivery_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
            (delivery_id, from_state, to_state, t, detail[:2000]),
        )


def retry_delivery(db: Database, delivery_id: int) -> bool:
    """Operator action: a dead (or waiting) delivery is sent again now. False if there is no such row."""
    with db.transaction() as conn:
        row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        if row is None or row["state"] not in ("dead", "retry"):
            return False
        Outbox._transition(conn, delivery_id, row["state"], "pending", "operator asked for a retry")
        conn.execute(
            "UPDATE deliveries SET attempts = 0, next_attempt_at = ?, last_error = NULL WHERE id = ?",
            (now(), delivery_id),
        )
    return True
