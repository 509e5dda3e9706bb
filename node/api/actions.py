"""Operator actions: re-run a study, retry a delivery. Each is one transaction in the index; the
worker processes and the outbox pick the work up from there (stages talk through the index only)."""

from __future__ import annotations

from node.export.outbox import retry_delivery
from node.index.db import Database
from node.index.deliveries import delivery_state
from node.index.jobs import open_job_count_of_study, record_transition
from node.index.series import series_of_study
from node.index.states import DeliveryState, JobState, SeriesState
from node.route.planner import JobPlanner


class ActionRefused(Exception):
    """The action cannot be done; ``status`` is the HTTP answer and ``reason`` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def rerun_study(db: Database, planner: JobPlanner, study_uid: str, operator: str) -> list[int]:
    """New queued jobs for every complete series of the study, as the routing rules decide now.

    Refused while the study still has queued or running work (a second copy would only compete
    with it) or when no series is complete yet (it is routed when it completes)."""
    with db.transaction() as conn:
        series = series_of_study(conn, study_uid)
        if not series:
            raise ActionRefused(404, "no such study")
        busy = open_job_count_of_study(conn, study_uid)
        if busy:
            raise ActionRefused(409, f"the study has {busy} queued or running job(s); wait for them to finish")
        complete = [s for s in series if s["state"] == SeriesState.COMPLETE]
        if not complete:
            raise ActionRefused(409, "no series of the study is complete yet")
        job_ids: list[int] = []
        for s in complete:
            for job_id in planner.queue_jobs(conn, s):
                # The trail says who asked: a second event on the queued job, same transaction.
                record_transition(
                    conn, job_id, JobState.QUEUED.value, JobState.QUEUED, f"re-run requested by {operator}"
                )
                job_ids.append(job_id)
        if not job_ids:
            raise ActionRefused(409, "the routing rules choose no pipeline for any series of this study")
    return job_ids


def retry(db: Database, delivery_id: int) -> None:
    state = delivery_state(db.connection(), delivery_id)
    if state is None:
        raise ActionRefused(404, "no such delivery")
    if not retry_delivery(db, delivery_id):
        retryable = " or ".join((DeliveryState.DEAD, DeliveryState.RETRY))
        raise ActionRefused(409, f"delivery is {state}; only {retryable} deliveries can be retried")
