"""Shorter polling sleeps inside pynetdicom, for the acceptor side of the node.

pynetdicom's association and DUL reactors poll their queues with fixed 1 ms sleeps. Profiling a
300-slice C-STORE run (py-spy, see benchmarks/bench_receive.py) showed the receive threads spend
most of their wall time in those two sleeps: each instance waits ~1-2 ms between "last PDU
arrived" and "handler runs", and again before the response goes out. Capping the sleeps at
0.2 ms removes most of that latency for a few percent of one core per idle association.
"""

from __future__ import annotations

import time as _time
import types

from pynetdicom import association as _association

MAX_POLL_SLEEP_S = 0.0002
DUL_LOOP_DELAY_S = 0.0002


def _capped_sleep(seconds: float) -> None:
    _time.sleep(min(seconds, MAX_POLL_SLEEP_S))


def install() -> None:
    """Give pynetdicom's association module a `time` whose sleep is capped (idempotent)."""
    current = getattr(_association, "time")  # noqa: B009  # the module's private import, not a public attribute
    if getattr(current, "ainode_capped", False):
        return
    shim = types.SimpleNamespace(**{name: getattr(_time, name) for name in dir(_time) if not name.startswith("__")})
    shim.sleep = _capped_sleep
    shim.ainode_capped = True
    setattr(_association, "time", shim)  # noqa: B010  # replaces the module's private `time` import
