"""`ainode worker --config FILE`: a Celery worker of cluster mode, on any machine that mounts the shared
storage and reaches PostgreSQL and RabbitMQ.

One job at a time per process (Celery's solo pool: the pipeline's model is loaded once, in this process,
as in the embedded workers). The task only names a job; :meth:`Worker.run_job_id` claims it in the index,
runs it with the same lease, heartbeat and result recording as the embedded worker, and returns. The
message is acknowledged after that (late ack). While the index is unreachable the message is handed
back to the broker after a pause, and the job runs once the index is back.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import structlog

from node.config import NodeConfig
from node.index.db import IndexUnavailable
from node.work.celery_app import RUN_JOB_TASK, make_celery, worker_queue_names
from node.work.worker import Worker, WorkerSettings

log = structlog.get_logger(__name__)

INDEX_DOWN_PAUSE_S = 2.0


def run_celery_worker(config: NodeConfig, worker_id: str | None = None) -> None:
    from celery.exceptions import Reject

    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    structlog.contextvars.bind_contextvars(worker_id=worker_id)
    app = make_celery(config.dispatch)
    worker = Worker(WorkerSettings.from_config(config), worker_id)
    for name in worker.settings.pipelines:  # models load now, not on the first job
        try:
            worker.pipeline(name)
        except Exception as exc:  # a broken pipeline fails its jobs with the reason; the worker stays up
            log.error("pipeline_load_failed", pipeline=name, reason=f"{type(exc).__name__}: {exc}")

    @app.task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_job(task: Any, job_id: int) -> str:
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        try:
            return worker.run_job_id(int(job_id), redelivered=redelivered)
        except IndexUnavailable as exc:
            log.warning("job_requeued_index_unavailable", job_id=job_id, reason=str(exc))
            worker._stop.wait(INDEX_DOWN_PAUSE_S)
            raise Reject(str(exc), requeue=True) from None

    queues = ",".join(worker_queue_names(config.dispatch))
    log.info("celery_worker_started", worker_id=worker_id, queues=queues, pid=os.getpid())
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queues}",
            f"--hostname={worker_id}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ]
    )
