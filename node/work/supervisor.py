"""Keeps the worker processes alive and enforces the per-job timeout.

The supervisor runs in the node's main process. It notices a worker that died (a crash, the
kernel's OOM killer) and fails the job it held with the reason, instead of waiting for the lease
to run out; it kills a worker whose job ran past ``job_timeout_s``; and it starts a replacement.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import uuid
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from node.config import NodeConfig
from node.index.db import Database, now
from node.index.jobs import finish_job_failed, running_jobs_of_worker
from node.work.worker import WorkerSettings, check_worker_device, worker_process_main

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 0.5


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (possibly out of memory)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def worker_payload(config: NodeConfig) -> dict[str, Any]:
    """What a spawned worker receives: its settings as JSON, not the node's whole configuration."""
    return WorkerSettings.from_config(config).model_dump(mode="json")


class WorkerSupervisor:
    def __init__(self, config: NodeConfig, db: Database, boot_id: str) -> None:
        check_worker_device(config.workers)  # `device: cuda` without CUDA stops start-up, naming the field
        self.config = config
        self.db = db
        self.boot_id = boot_id
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[str, BaseProcess] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="worker-supervisor")

    def start(self) -> None:
        for _ in range(self.config.workers.processes):
            self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        worker_id = f"{self.boot_id}-w{uuid.uuid4().hex[:6]}"
        proc = self._ctx.Process(
            target=worker_process_main,
            args=(worker_payload(self.config), worker_id),
            name=f"ainode-worker-{worker_id}",
            daemon=True,
        )
        proc.start()
        self._workers[worker_id] = proc

    def alive(self) -> int:
        return sum(1 for p in self._workers.values() if p.is_alive())

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL_S):
            try:
                self._check()
            except Exception:
                log.exception("supervisor_check_failed")

    def _check(self) -> None:
        timeout = self.config.workers.job_timeout_s
        for worker_id, proc in list(self._workers.items()):
            running = running_jobs_of_worker(self.db, worker_id)
            if not proc.is_alive():
                reason = f"worker process {_describe_exit(proc.exitcode)} while running the job"
                for job in running:
                    finish_job_failed(self.db, job["id"], reason)
                    log.error("job_failed", job_id=job["id"], reason=reason)
                del self._workers[worker_id]
                if not self._stop.is_set():
                    self._spawn()
                continue
            for job in running:
                if job["started_at"] is not None and now() - job["started_at"] > timeout:
                    proc.kill()
                    proc.join(timeout=10)
                    reason = f"timed out after {timeout:.0f} s; worker stopped"
                    finish_job_failed(self.db, job["id"], reason)
                    log.error("job_failed", job_id=job["id"], reason=reason)

    def stop(self) -> None:
        self._stop.set()
        for proc in self._workers.values():
            proc.terminate()
        for proc in self._workers.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        self._workers.clear()
