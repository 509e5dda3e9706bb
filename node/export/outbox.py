"""The outbox: one delivery row per (result object, destination), driven to 'sent' or 'dead'.

States: pending → sending → sent | retry (transient failure, a backoff later) | dead (permanent
failure, or retries exhausted; with the reason, at once — no retry storm against a PACS that
said no). A delivery found 'sending' at start-up was interrupted by a crash: it goes back to
retry. Re-sending reuses the same file and so the same SOP Instance UID, so the PACS ends up
with one copy whatever happens.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import structlog

from node.errors import DeliveryError
from node.export.backoff import RetryPolicy, next_retry_delay
from node.export.destinations import Destination, FileOutcome
from node.index import deliveries
from node.index.db import Connection, Database, now
from node.index.states import DeliveryState

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
    ) -> None:
        self.db = db
        self.destinations = destinations
        self.policy = policy
        self.batch_size = batch_size
        self.rng = rng or random.Random()
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
                busy = self.deliver_due()
            except Exception:
                log.exception("outbox_pass_failed")
                busy = 0
            if not busy:
                self._stop.wait(interval_s)

    def recover_interrupted(self) -> int:
        """'sending' rows belong to a process that died mid-send: send them again."""
        with self.db.transaction() as conn:
            ids = deliveries.interrupted_delivery_ids(conn)
            for delivery_id in ids:
                self._transition(
                    conn, delivery_id, DeliveryState.SENDING, DeliveryState.RETRY, "node restarted during the send"
                )
                deliveries.set_next_attempt(conn, delivery_id, now())
        return len(ids)

    # --- one pass --------------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """Send what is due, one batch per destination. Returns how many deliveries were attempted."""
        t = now()
        due = deliveries.due_deliveries(self.db, t, self.batch_size * 4)
        by_destination: dict[str, list[_Due]] = defaultdict(list)
        for row in due:
            if len(by_destination[row["destination"]]) < self.batch_size:
                by_destination[row["destination"]].append(_Due(row["id"], row["destination"], Path(row["path"])))
        attempted = 0
        for name, rows in by_destination.items():
            attempted += len(rows)
            self._deliver_batch(name, rows)
        return attempted

    def _deliver_batch(self, name: str, rows: list[_Due]) -> None:
        bound = log.bind(destination=name)
        destination = self.destinations.get(name)
        if destination is None:
            self._finish_all(rows, permanent=True, reason=f"destination {name!r} is not configured")
            return
        with self.db.transaction() as conn:
            for row in rows:
                self._transition(conn, row.id, None, DeliveryState.SENDING, "")
                deliveries.count_attempt(conn, row.id)
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
                    self._transition(conn, row.id, DeliveryState.SENDING, DeliveryState.SENT, outcome.detail)
                    deliveries.mark_sent_at(conn, row.id, now())
                else:
                    detail = outcome.detail if outcome else "no outcome reported by the destination"
                    permanent = bool(outcome.permanent) if outcome else False
                    self._fail(conn, row, permanent, detail)
        bound.info("delivery_batch", sent=len(report.delivered), failed=len(report.failed))

    def _finish_all(self, rows: list[_Due], *, permanent: bool, reason: str) -> None:
        with self.db.transaction() as conn:
            for row in rows:
                self._fail(conn, row, permanent, reason)

    def _fail(self, conn: Connection, row: _Due, permanent: bool, reason: str) -> None:
        delivery_id = row.id
        attempts = deliveries.delivery_attempts(conn, delivery_id)
        delay = None if permanent else next_retry_delay(attempts, self.policy, self.rng)
        if delay is None:
            why = reason if permanent else f"gave up after {attempts} attempts: {reason}"
            self._transition(conn, delivery_id, None, DeliveryState.DEAD, why)
            deliveries.set_last_error(conn, delivery_id, why)
            log.error("delivery_dead", delivery_id=delivery_id, destination=row.destination, reason=why)
        else:
            self._transition(conn, delivery_id, None, DeliveryState.RETRY, f"retry in {delay:.1f} s: {reason}")
            deliveries.schedule_retry(conn, delivery_id, now() + delay, reason)

    @staticmethod
    def _transition(
        conn: Connection, delivery_id: int, from_state: str | None, to_state: DeliveryState, detail: str
    ) -> None:
        deliveries.record_transition(conn, delivery_id, from_state, to_state, detail)


def retry_delivery(db: Database, delivery_id: int) -> bool:
    """Operator action: a dead (or waiting) delivery is sent again now. False if there is no such row."""
    with db.transaction() as conn:
        state = deliveries.delivery_state(conn, delivery_id)
        if state is None or state not in (DeliveryState.DEAD, DeliveryState.RETRY):
            return False
        Outbox._transition(conn, delivery_id, state, DeliveryState.PENDING, "operator asked for a retry")
        deliveries.reset_for_operator_retry(conn, delivery_id, now())
    return True
