"""Destination health: is a destination answering? One row per destination in ``destination_health``.

A transient failure of a whole transfer (refused connection, timeout, HTTP 5xx) marks the destination
``down``. While it is down its deliveries wait and no object is sent to it; one probe (the
destination's ``ping``: C-ECHO, a QIDO GET, Orthanc's ``/system``) on a capped backoff with jitter
decides when it is back. The moment a probe answers, the outbox sends every waiting delivery of that
destination, result set by result set. This replaces per-object guessing: after an outage each
delivery used to sit at its own point of an exponential schedule, and the last result of a set could
reach a PACS that had been back for minutes.

The rows live in the index (not in memory) so that a restarted node resumes probing where it was,
and the metrics and the worklist, read in other threads, see the same state. This module owns the
table's SQL.
"""

from __future__ import annotations

import enum
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from node.export.backoff import RetryPolicy, next_retry_delay
from node.store.db import Database


class HealthState(enum.StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Health:
    destination: str
    state: HealthState
    since: float
    failed_probes: int
    next_probe_at: float | None
    last_error: str | None

    @property
    def up(self) -> bool:
        return self.state is HealthState.UP

    def probe_due(self, at: float) -> bool:
        return not self.up and (self.next_probe_at is None or self.next_probe_at <= at)


def _from_row(row: sqlite3.Row) -> Health:
    return Health(
        destination=row["destination"],
        state=HealthState(row["state"]),
        since=float(row["since"]),
        failed_probes=int(row["failed_probes"]),
        next_probe_at=None if row["next_probe_at"] is None else float(row["next_probe_at"]),
        last_error=row["last_error"],
    )


class HealthBook:
    """Reads and writes ``destination_health``; the probe schedule follows ``policy``."""

    def __init__(self, db: Database, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.db = db
        self.policy = policy
        self.rng = rng or random.Random()

    def track(self, names: Iterable[str], at: float) -> None:
        """Rows for exactly the configured destinations: new ones start up, unconfigured ones go."""
        wanted = sorted(set(names))
        with self.db.transaction() as conn:
            for name in wanted:
                conn.execute(
                    """INSERT OR IGNORE INTO destination_health (destination, state, since, updated_at)
                       VALUES (?, 'up', ?, ?)""",
                    (name, at, at),
                )
            marks = ", ".join("?" for _ in wanted)
            conn.execute(f"DELETE FROM destination_health WHERE destination NOT IN ({marks})", tuple(wanted))

    def get(self, name: str) -> Health:
        rows = self.db.query("SELECT * FROM destination_health WHERE destination = ?", (name,))
        if not rows:
            return Health(name, HealthState.UP, 0.0, 0, None, None)
        return _from_row(rows[0])

    def mark_down(self, name: str, reason: str, at: float) -> Health:
        """A transfer failed transiently: down (since now, unless it already was); first probe soon."""
        current = self.get(name)
        since = current.since if not current.up else at
        failed = current.failed_probes if not current.up else 0
        return self._write(name, HealthState.DOWN, since, failed, at + self._delay(failed + 1), reason, at)

    def probe_failed(self, name: str, reason: str, at: float) -> Health:
        current = self.get(name)
        failed = current.failed_probes + 1
        return self._write(name, HealthState.DOWN, current.since, failed, at + self._delay(failed + 1), reason, at)

    def mark_up(self, name: str, at: float) -> Health:
        return self._write(name, HealthState.UP, at, 0, None, None, at)

    def _delay(self, attempt: int) -> float:
        # Capped: however long the outage, the next probe is at most max_delay_s away.
        return next_retry_delay(attempt, self.policy, self.rng)

    def _write(
        self,
        name: str,
        state: HealthState,
        since: float,
        failed_probes: int,
        next_probe_at: float | None,
        last_error: str | None,
        at: float,
    ) -> Health:
        with self.db.transaction() as conn:
            conn.execute(
                """INSERT INTO destination_health
                       (destination, state, since, failed_probes, next_probe_at, last_error, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(destination) DO UPDATE SET state = excluded.state, since = excluded.since,
                       failed_probes = excluded.failed_probes, next_probe_at = excluded.next_probe_at,
                       last_error = excluded.last_error, updated_at = excluded.updated_at""",
                (name, state.value, since, failed_probes, next_probe_at, (last_error or "")[:2000] or None, at),
            )
        return Health(name, state, since, failed_probes, next_probe_at, last_error)


def probe_now(conn: sqlite3.Connection, name: str, at: float) -> None:
    """Inside the caller's transaction: a down destination is probed at the next outbox pass (operator retry)."""
    conn.execute("UPDATE destination_health SET next_probe_at = ? WHERE destination = ? AND state = 'down'", (at, name))


def health_rows(db: Database) -> list[Health]:
    """Every tracked destination's health (metrics, worklist)."""
    return [_from_row(r) for r in db.query("SELECT * FROM destination_health ORDER BY destination")]
