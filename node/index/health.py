"""``destination_health``: one row per configured destination, up or down (issue 16).

The rows live in the index (not in memory) so that a restarted node resumes probing where it was, and
the metrics and the worklist, read in other threads, see the same state. The probe schedule (when the
next probe is due) is decided by ``node/export/health.py``; these functions only store it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.index.db import Connection, Database, Row
from node.index.states import HealthState


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


def _from_row(row: Row) -> Health:
    return Health(
        destination=row["destination"],
        state=HealthState(row["state"]),
        since=float(row["since"]),
        failed_probes=int(row["failed_probes"]),
        next_probe_at=None if row["next_probe_at"] is None else float(row["next_probe_at"]),
        last_error=row["last_error"],
    )


def track_destinations(db: Database, names: Iterable[str], at: float) -> None:
    """Rows for exactly the configured destinations: new ones start up, unconfigured ones go."""
    wanted = sorted(set(names))
    with db.transaction() as conn:
        for name in wanted:
            conn.execute(
                """INSERT INTO destination_health (destination, state, since, updated_at)
                   VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (name, HealthState.UP, at, at),
            )
        marks = ", ".join("?" for _ in wanted)
        conn.execute(f"DELETE FROM destination_health WHERE destination NOT IN ({marks})", tuple(wanted))


def destination_health(db: Database, name: str) -> Health:
    """The destination's health; one never seen is up."""
    rows = db.query("SELECT * FROM destination_health WHERE destination = ?", (name,))
    if not rows:
        return Health(name, HealthState.UP, 0.0, 0, None, None)
    return _from_row(rows[0])


def write_health(db: Database, health: Health, at: float) -> None:
    with db.transaction() as conn:
        conn.execute(
            """INSERT INTO destination_health
                   (destination, state, since, failed_probes, next_probe_at, last_error, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(destination) DO UPDATE SET state = excluded.state, since = excluded.since,
                   failed_probes = excluded.failed_probes, next_probe_at = excluded.next_probe_at,
                   last_error = excluded.last_error, updated_at = excluded.updated_at""",
            (
                health.destination,
                health.state.value,
                health.since,
                health.failed_probes,
                health.next_probe_at,
                (health.last_error or "")[:2000] or None,
                at,
            ),
        )


def probe_now(conn: Connection, name: str, at: float) -> None:
    """Inside the caller's transaction: a down destination is probed at the next outbox pass (operator retry)."""
    conn.execute(
        "UPDATE destination_health SET next_probe_at = ? WHERE destination = ? AND state = ?",
        (at, name, HealthState.DOWN),
    )


def health_rows(db: Database) -> list[Health]:
    """Every tracked destination's health (metrics, worklist)."""
    return [_from_row(r) for r in db.query("SELECT * FROM destination_health ORDER BY destination")]
