"""Cluster mode's engine: Celery on RabbitMQ, configured for "run job N" messages that must not be lost.

- late acks: a message is acknowledged when its job has finished, not when a worker takes it; a worker
  that dies (kill -9, power) leaves it unacknowledged and RabbitMQ hands it to another worker;
- reject on worker lost, prefetch 1: a worker holds one message at a time, the one it runs;
- durable quorum queues, one per device class (``ainode.gpu``, ``ainode.cpu``...): a pipeline's jobs
  go to the workers of its class (``dispatch.pipeline_queues``), and survive a broker restart;
- publisher confirms: a publish returns once the broker has the message; a failed publish leaves the
  job queued in the index, to be published again (node/work/dispatch.py).

The job's state is in the index, never in Celery (no result backend): a message only says which job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.config import DispatchConfig

if TYPE_CHECKING:
    from celery import Celery

RUN_JOB_TASK = "ainode.run_job"
EXCHANGE = "ainode"


def queue_name(device_class: str) -> str:
    return f"ainode.{device_class}"


def queue_of_pipeline(dispatch: DispatchConfig, pipeline: str) -> str:
    """The queue a pipeline's jobs go to (its device class's)."""
    return queue_name(dispatch.pipeline_queues.get(pipeline, dispatch.default_queue))


def worker_queue_names(dispatch: DispatchConfig) -> list[str]:
    return [queue_name(q) for q in (dispatch.worker_queues or [dispatch.default_queue])]


def broker_url(dispatch: DispatchConfig) -> str:
    """``broker_url`` with the password from ``broker_password_file`` put in (never logged)."""
    url = dispatch.broker_url
    if dispatch.broker_password_file is None:
        return url
    password = dispatch.broker_password_file.read_text().strip()
    scheme, rest = url.split("://", 1)
    user, at, host = rest.partition("@")
    if not at:
        raise ValueError("dispatch.broker_url names no user for broker_password_file")
    from urllib.parse import quote

    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


def make_celery(dispatch: DispatchConfig) -> Celery:
    from celery import Celery
    from kombu.entity import Exchange, Queue

    app = Celery("ainode", broker=broker_url(dispatch), set_as_current=False)
    # kombu ships no type hints: its two constructors are untyped.
    exchange = Exchange(EXCHANGE, type="direct", durable=True)  # type: ignore[no-untyped-call]
    classes = sorted({dispatch.default_queue, *dispatch.pipeline_queues.values(), *dispatch.worker_queues})
    app.conf.update(
        task_queues=[
            Queue(  # type: ignore[no-untyped-call]
                queue_name(c),
                exchange,
                routing_key=queue_name(c),
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for c in classes
        ],
        task_default_queue=queue_name(dispatch.default_queue),
        task_default_exchange=EXCHANGE,
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # Quorum queues take no global QoS: Celery then applies prefetch per consumer.
        worker_detect_quorum_queues=True,
        task_ignore_result=True,
        broker_transport_options={"confirm_publish": True},
        # A publish while the broker is down fails at once: the dispatcher keeps the job and tries later.
        task_publish_retry=False,
        broker_connection_timeout=3,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )
    return app
