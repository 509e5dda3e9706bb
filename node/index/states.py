"""The states stored in the index, one Enum per state column.

StrEnum members are the strings the index stores (``JobState.QUEUED == "queued"``), so rows written
before these Enums existed read the same, and the schema's CHECK constraints are built from them.
"""

from __future__ import annotations

import enum


class SeriesState(enum.StrEnum):
    """``series.state``: instances still arriving, or complete (routed into jobs)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class JobState(enum.StrEnum):
    """``jobs.state``: queued → running → done | failed | superseded."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class DeliveryState(enum.StrEnum):
    """``deliveries.state``: pending → sending → sent | retry (a backoff later) | dead."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    DEAD = "dead"


class HealthState(enum.StrEnum):
    """``destination_health.state``: a destination answering (up) or failing transiently (down, probed)."""

    UP = "up"
    DOWN = "down"


class WithdrawalMethod(enum.StrEnum):
    """``withdrawals.method``: how a destination's superseded results are withdrawn (``superseded`` policy)."""

    REJECT = "reject"  # listed in an IOCM rejection note delivered there
    DELETE = "delete"  # deleted through the destination's REST API


class WithdrawalState(enum.StrEnum):
    """``withdrawals.state``: noted (in a rejection note) | pending → deleted | retry | dead."""

    NOTED = "noted"
    PENDING = "pending"
    RETRY = "retry"
    DELETED = "deleted"
    DEAD = "dead"


def sql_choices(states: type[enum.StrEnum]) -> str:
    """``'a', 'b'`` for a CHECK (state IN (...)) constraint."""
    return ", ".join(f"'{s.value}'" for s in states)
