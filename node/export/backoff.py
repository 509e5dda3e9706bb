"""Retry schedule for transient delivery failures: capped exponential backoff with full jitter.

delay(attempt) = uniform(0, min(max_delay, base * 2**(attempt-1)))  — "full jitter" (AWS architecture
blog, 2015): spreads the probes of many nodes that saw one PACS go down so they do not hit it in
lockstep when it recovers. The cap is the promise of the design: however long an outage lasts, the
next try is never more than ``max_delay_s`` away, so results reach a PACS that came back within one
cap (plus the send). Giving up is a matter of age (``give_up_after_s``), not of attempt count: a long
maintenance window must not turn waiting results into dead ones.
Pure: give it a ``random.Random`` and it is deterministic.
"""

from __future__ import annotations

import random

from node.config.delivery import RetryPolicy

__all__ = ["RetryPolicy", "backoff_ceiling", "gave_up", "next_retry_delay"]


def backoff_ceiling(attempt: int, policy: RetryPolicy) -> float:
    """Upper bound of the delay after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # Cap the exponent so that 2**n cannot overflow a float for absurd attempt numbers.
    exponent = min(attempt - 1, 62)
    return float(min(policy.max_delay_s, policy.base_delay_s * (2.0**exponent)))


def next_retry_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): never more than ``max_delay_s``."""
    return (rng or random.Random()).uniform(0.0, backoff_ceiling(attempt, policy))


def gave_up(waiting_since: float, at: float, policy: RetryPolicy) -> bool:
    """True when a delivery failing transiently since ``waiting_since`` is too old to keep waiting at ``at``."""
    return at - waiting_since >= policy.give_up_after_s
