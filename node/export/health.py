"""Destination health: is a destination answering?

A transient failure of a whole transfer (refused connection, timeout, HTTP 5xx) marks the destination
``down``. While it is down its deliveries wait and no object is sent to it; one probe (the
destination's ``ping``: C-ECHO, a QIDO GET, Orthanc's ``/system``) on a capped backoff with jitter
decides when it is back. The moment a probe answers, the outbox sends every waiting delivery of that
destination, result set by result set. This replaces per-object guessing: after an outage each
delivery used to sit at its own point of an exponential schedule, and the last result of a set could
reach a PACS that had been back for minutes. The rows are stored by ``node/index/health.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from node.export.backoff import RetryPolicy, next_retry_delay
from node.index.db import Database
from node.index.health import Health, destination_health, track_destinations, write_health
from node.index.states import HealthState

__all__ = ["Health", "HealthBook"]


class HealthBook:
    """The probe schedule of ``destination_health``; it follows ``policy``."""

    def __init__(self, db: Database, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.db = db
        self.policy = policy
        self.rng = rng or random.Random()

    def track(self, names: Iterable[str], at: float) -> None:
        """Rows for exactly the configured destinations: new ones start up, unconfigured ones go."""
        track_destinations(self.db, names, at)

    def get(self, name: str) -> Health:
        return destination_health(self.db, name)

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
        health = Health(name, state, since, failed_probes, next_probe_at, last_error)
        write_health(self.db, health, at)
        return health
