"""Cluster mode: which jobs were handed to the broker, and when (``dispatches``, PostgreSQL only).

The job's state stays in ``jobs``; the broker only carries "run job N". A receiver's dispatcher
(node/work/dispatch.py) publishes what these functions select, so a job the broker lost (a message
dropped, a queue deleted, a publish cut short by a crash) is published again from the index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.index.db import Connection, Database
from node.index.states import JobState


@dataclass(frozen=True)
class ToPublish:
    job_id: int
    queue: str  # the device class's queue
    republish: bool  # published before (lost, or its worker's lease ran out)


def take_jobs_to_publish(
    conn: Connection, t: float, republish_after_s: float, limit: int, queue_of: Callable[[str], str]
) -> list[ToPublish]:
    """Inside the caller's transaction: jobs to publish now, recorded as published at ``t``.

    Queued jobs never published, or published more than ``republish_after_s`` ago; running jobs whose
    lease ran out after their last publish (their worker is gone and the broker may not redeliver)."""
    rows = conn.execute(
        """SELECT j.id, j.pipeline, d.job_id IS NOT NULL AS published FROM jobs j
           LEFT JOIN dispatches d ON d.job_id = j.id
           WHERE (j.state = ? AND (d.job_id IS NULL OR d.published_at < ?))
              OR (j.state = ? AND j.lease_expires_at < ? AND d.published_at < j.lease_expires_at)
           ORDER BY j.id LIMIT ?""",
        (JobState.QUEUED, t - republish_after_s, JobState.RUNNING, t, limit),
    ).fetchall()
    taken = [ToPublish(int(r["id"]), queue_of(str(r["pipeline"])), bool(r["published"])) for r in rows]
    for job in taken:
        conn.execute(
            """INSERT INTO dispatches (job_id, queue, published_at) VALUES (?, ?, ?)
               ON CONFLICT(job_id) DO UPDATE SET queue = excluded.queue, published_at = excluded.published_at,
                   publish_count = dispatches.publish_count + 1""",
            (job.job_id, job.queue, t),
        )
    return taken


def forget_publish(db: Database, job_id: int) -> None:
    """The publish failed (broker down): the job is taken again at the next pass."""
    with db.transaction() as conn:
        conn.execute("UPDATE dispatches SET published_at = 0 WHERE job_id = ?", (job_id,))


def publish_counts(db: Database) -> dict[int, int]:
    """``{job_id: times published}`` (tests, status)."""
    return {int(r["job_id"]): int(r["publish_count"]) for r in db.query("SELECT job_id, publish_count FROM dispatches")}
