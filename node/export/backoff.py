"""Retry schedule for transient delivery failures: exponential backoff with full jitter.

delay(attempt) = uniform(0, min(max_delay, base * 2**(attempt-1)))  — "full jitter" (AWS architecture
blog, 2015): spreads retries of many deliveries that failed together so they do not hit a recovering
PACS in lockstep. Pure: give it a ``random.Random`` and it is deterministic.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_delay_s: float = Field(default=5.0, gt=0, description="Ceiling of the first retry's delay.")
    max_delay_s: float = Field(default=900.0, gt=0, description="No retry waits longer than this.")
    max_attempts: int = Field(
        default=12, ge=1, description="Attempts in all (the first one included); then the delivery is dead."
    )

    @model_validator(mode="after")
    def _max_not_below_base(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError("max_delay_s must be >= base_delay_s")
        return self


def backoff_ceiling(attempt: int, policy: RetryPolicy) -> float:
    """Upper bound of the delay after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # Cap the exponent so that 2**n cannot overflow a float for absurd attempt numbers.
    exponent = min(attempt - 1, 62)
    return float(min(policy.max_delay_s, policy.base_delay_s * (2.0**exponent)))


def next_retry_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (1-based), or None when no attempt is left."""
    if attempt >= policy.max_attempts:
        return None
    ceiling = backoff_ceiling(attempt, policy)
    return (rng or random.Random()).uniform(0.0, ceiling)
