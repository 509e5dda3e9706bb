"""Cluster mode: publish queued jobs from the index to the broker (a thread in every `ainode serve`).

The index stays the truth: completeness queues a job (one transaction, as in the embedded node), and this
loop publishes "run job N" to the queue of the job's device class. A publish is recorded before it is
sent; one that fails (broker down) is forgotten, so the job is taken at the next pass. A job published
``republish_after_s`` ago and still queued, or one whose worker's lease ran out, is published again: the
broker may have lost the message. Duplicates are harmless (``claim_job``: the index decides who runs a job).
Several receivers run this loop at once; the index's writer lock keeps them from taking the same job.
"""

from __future__ import annotations

import threading

import structlog

from node.config import DispatchConfig
from node.index.db import Database, now
from node.index.dispatches import ToPublish, forget_publish, take_jobs_to_publish
from node.work.celery_app import RUN_JOB_TASK, make_celery, queue_of_pipeline

log = structlog.get_logger(__name__)

BATCH = 100


class Dispatcher:
    def __init__(self, db: Database, dispatch: DispatchConfig) -> None:
        self.db = db
        self.config = dispatch
        self.app = make_celery(dispatch)
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dispatcher")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.config.check_interval_s):
            try:
                while self.publish_due() == BATCH:
                    pass
            except Exception as exc:  # the index down: the jobs wait in it, the next pass tries again
                log.warning("dispatch_pass_failed", reason=f"{type(exc).__name__}: {exc}")

    def publish_due(self) -> int:
        """Publish what is due now; how many jobs were taken."""
        with self.db.transaction() as conn:
            taken = take_jobs_to_publish(
                conn,
                now(),
                self.config.republish_after_s,
                BATCH,
                lambda pipeline: queue_of_pipeline(self.config, pipeline),
            )
        for n, job in enumerate(taken):
            try:
                self._publish(job)
            except Exception as exc:
                for unsent in taken[n:]:
                    forget_publish(self.db, unsent.job_id)
                log.warning("publish_failed", job_id=job.job_id, queue=job.queue, reason=f"{type(exc).__name__}")
                return len(taken[:n])
        return len(taken)

    def _publish(self, job: ToPublish) -> None:
        self.app.send_task(RUN_JOB_TASK, args=[job.job_id], queue=job.queue)
        self.published += 1
        log.info("job_published", job_id=job.job_id, queue=job.queue, again=job.republish)
