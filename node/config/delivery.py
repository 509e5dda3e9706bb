"""``delivery.retry``: how the outbox retries transient failures and probes a destination that is down.

The schedule itself (capped exponential backoff with full jitter, giving up by age) is ``node/export/backoff.py``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_delay_s: float = Field(default=1.0, gt=0, description="Ceiling of the first probe/retry delay.")
    # 10 s: results reach a PACS that came back within about 10 s (one probe interval + the send); one
    # C-ECHO every few seconds is no load for a PACS, down or up.
    max_delay_s: float = Field(
        default=10.0, gt=0, le=3600, description="No probe or retry waits longer than this, however long the outage."
    )
    give_up_after_s: float = Field(
        default=86400.0,
        gt=0,
        description="A delivery still failing transiently this long after its first failure is dead.",
    )

    @model_validator(mode="before")
    @classmethod
    def _attempt_count_is_gone(cls, data: Any) -> Any:
        # Sites upgrading with the old key get the reason, not just "extra inputs are not permitted".
        if isinstance(data, dict) and "max_attempts" in data:
            raise ValueError(
                "max_attempts was replaced by give_up_after_s: transient failures are retried until they are "
                "this old (default 86400 s), whatever the number of attempts"
            )
        return data

    @model_validator(mode="after")
    def _max_not_below_base(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError("max_delay_s must be >= base_delay_s")
        return self
