"""A worker process: claims jobs from the index, runs their pipeline, records results.

Workers are separate processes (spawned, not forked: they share no threads or sockets with the
SCP), so a pipeline that crashes, raises or runs out of memory fails that job and nothing else.
Each worker loads a pipeline once and reuses it for every job.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import structlog
from pydantic import BaseModel, ConfigDict

from node.config import FollowupConfig, IndexConfig, LoggingConfig, NodeConfig, WorkerConfig
from node.errors import ConfigError
from node.index import deliveries, open_index, results, series
from node.index.db import Database, IndexUnavailable, now
from node.index.jobs import (
    Job,
    claim_job,
    claim_next_job,
    finish_job_failed,
    job_state_and_lease_owner,
    mark_job_done,
    mark_job_superseded_on_finish,
    record_transition,
    renew_lease,
    series_generation,
)
from node.index.states import JobState
from node.logging_setup import configure_logging
from node.store.spool import Spool
from node.work.runner import Reading, run_series
from pipelines.base import CTVolume, Pipeline, PipelineResult, ResultStatus, RuntimeOptions
from pipelines.followup.assessment import FollowUpReport

log = structlog.get_logger(__name__)

IDLE_POLL_S = 0.25
INDEX_FILENAME = "index.sqlite"  # in storage.data_dir


def index_path(config: NodeConfig) -> Path:
    """The embedded index's file (index.backend sqlite)."""
    return config.storage.data_dir / INDEX_FILENAME


def open_configured_index(config: NodeConfig) -> Database:
    """The index ``config.index`` names: the SQLite file in the data dir, or the PostgreSQL server."""
    return open_index(
        backend=config.index.backend, sqlite_path=index_path(config), postgresql_dsn=config.index.postgresql_dsn
    )


class WorkerSettings(BaseModel):
    """What a worker process needs of the node's configuration, and all it receives (no secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path
    index: IndexConfig = IndexConfig()
    workers: WorkerConfig
    logging: LoggingConfig
    pipelines: list[str]  # the routed pipelines: built when the worker starts, not on its first job
    followup: FollowupConfig = FollowupConfig()

    @classmethod
    def from_config(cls, config: NodeConfig) -> WorkerSettings:
        routed = sorted({p for route in config.routes for p in route.pipelines})
        return cls(
            data_dir=config.storage.data_dir,
            index=config.index,
            workers=config.workers,
            logging=config.logging,
            pipelines=routed,
            followup=config.followup,
        )


def runtime_options(workers: WorkerConfig) -> RuntimeOptions:
    return RuntimeOptions(device=workers.device, threads=workers.torch_threads)


def check_worker_device(workers: WorkerConfig) -> None:
    """Stop start-up (and `ainode check-config`) when ``workers.device`` is not on this machine.

    Only ``cuda`` can fail, and only it imports torch here; ``auto`` and ``cpu`` cost nothing.
    """
    from pipelines.devices import DeviceUnavailable, check_device

    if workers.processes == 0:
        return  # no workers: nothing runs a pipeline
    try:
        check_device(workers.device)
    except DeviceUnavailable as exc:
        raise ConfigError(f"workers.device: {exc}") from None


def result_uid_seed(installation_id: str, job: Job) -> str:
    """The seed every result UID of ``job`` derives from.

    Same seed for every attempt of this job: a job taken again after a crash produces the same SOP
    Instance UIDs, so the PACS never holds two copies. A new job (late instances, an operator's re-run)
    makes new objects, which say what they supersede. Job ids and generations restart with a new index
    (a re-installed node, a wiped data dir): the installation id keeps those results apart from the old
    ones, which the PACS would otherwise keep in their place.
    """
    return f"{installation_id}/{job.series_uid}/{job.generation}/{job.pipeline}/{job.id}"


class Worker:
    def __init__(self, settings: WorkerSettings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.db = open_index(
            backend=settings.index.backend,
            sqlite_path=settings.data_dir / INDEX_FILENAME,
            postgresql_dsn=settings.index.postgresql_dsn,
        )
        self.spool = Spool(settings.data_dir)
        self._pipelines: dict[str, Pipeline] = {}
        self._stop = threading.Event()

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            from pipelines.registry import load_pipeline

            wc = self.settings.workers
            # The model loads once per process, on the configured device, with the pipeline's options.
            self._pipelines[name] = load_pipeline(name, runtime_options(wc), wc.pipeline_options.get(name))
        return self._pipelines[name]

    def run_forever(self) -> None:
        log.info("worker_started", worker_id=self.worker_id, pid=os.getpid())
        # Load the routed pipelines' models now, not on the first job: a job's latency then excludes it.
        for name in self.settings.pipelines:
            try:
                self.pipeline(name)
            except Exception as exc:  # a broken pipeline fails its jobs with the reason; the worker stays up
                log.error("pipeline_load_failed", pipeline=name, reason=f"{type(exc).__name__}: {exc}")
        while not self._stop.is_set():
            if not self.run_one():
                self._stop.wait(IDLE_POLL_S)

    def run_one(self) -> bool:
        """Claim and run one job. False when there was nothing to do."""
        wc = self.settings.workers
        job = claim_next_job(self.db, self.worker_id, wc.lease_s, wc.max_attempts)
        if job is None:
            return False
        self.run_claimed(job)
        return True

    def run_job_id(self, job_id: int, *, redelivered: bool) -> str:
        """Cluster mode: run the job a broker message names, if the index says it is still to run.

        A redelivered message (its worker died holding it) may find the job still leased to that worker:
        it waits for the lease to run out, at most one lease, then takes the job over. Any other message
        for a job leased to someone, or finished, is a duplicate and is dropped. Returns what happened."""
        wc = self.settings.workers
        give_up_at = now() + wc.lease_s + 1
        while True:
            claim = claim_job(self.db, job_id, self.worker_id, wc.lease_s, wc.max_attempts)
            if isinstance(claim, Job):
                self.run_claimed(claim)
                return "ran"
            waiting = redelivered and claim.lease_expires_at is not None and now() < give_up_at
            if not waiting or claim.lease_expires_at is None:
                log.info("job_message_dropped", job_id=job_id, reason=claim.reason)
                return f"dropped: {claim.reason}"
            self._stop.wait(min(max(claim.lease_expires_at - now(), 0.0) + 0.1, 2.0))

    def run_claimed(self, job: Job) -> None:
        """Run a job this worker holds the lease of, and record its results (or its failure)."""
        wc = self.settings.workers
        bound = log.bind(job_id=job.id, series_uid=job.series_uid, pipeline=job.pipeline)
        bound.info("job_started", attempt=job.attempts)
        heartbeat = _LeaseHeartbeat(self.db, job.id, self.worker_id, wc.lease_s)
        heartbeat.start()
        try:
            result, outputs, timings, reading = self._execute(job)
            self._finish(job, result, outputs, timings, reading)
        except IndexUnavailable:
            # Not the job's fault: it stays leased, and is run again once the index is back (the lease
            # runs out; in cluster mode the message is handed back to the broker).
            bound.warning("job_interrupted_index_unavailable")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            bound.error("job_failed", reason=reason, traceback=traceback.format_exc(limit=8))
            finish_job_failed(self.db, job.id, reason[:2000])
        finally:
            heartbeat.stop()

    def _execute(
        self, job: Job
    ) -> tuple[PipelineResult, list[tuple[str, str, Path]], dict[str, float], FollowUpReport | None]:
        """Run the job's pipeline on its series; the result, its DICOM objects [(sop_uid, kind, path)], timings,
        and the follow-up reading (when ``followup.enabled``)."""
        paths = series.instance_paths(self.db, job.series_uid)
        t = time.perf_counter()
        pipeline = self.pipeline(job.pipeline)
        model_load_s = time.perf_counter() - t
        fc = self.settings.followup
        workdir = self.settings.data_dir / "followup" / str(job.id)
        run = run_series(
            pipeline,
            paths,
            series_uid=job.series_uid,
            uid_seed=lambda _volume: result_uid_seed(self.db.installation_id(), job),
            previous_reports=lambda: self._earlier_reports(job),
            reading=self._reading(job, pipeline, workdir) if fc.enabled else None,
            reading_in_sr=fc.outputs.followup_in_sr,
            gradcam_sc=fc.outputs.gradcam_sc,
        )
        shutil.rmtree(workdir, ignore_errors=True)  # the prior's images: fetched for this job only
        from node.encode import write_results  # highdicom: imported by workers, not by the node's main process

        written = write_results(run.datasets, self.spool.results_root / str(job.id)) if run.datasets else []
        outputs = [(str(ds.SOPInstanceUID), str(ds.Modality), p) for ds, p in zip(run.datasets, written, strict=True)]
        return run.result, outputs, {"model_load": model_load_s, **run.timings_s}, run.reading

    def _reading(self, job: Job, pipeline: Pipeline, workdir: Path) -> Reading:
        from node.work.followup import read_followup

        def reading(volume: CTVolume, result: PipelineResult, sources: Sequence[pydicom.Dataset]) -> FollowUpReport:
            return read_followup(
                self.settings.followup,
                pipeline,
                volume,
                result,
                sources[0],
                workdir=workdir,
                own_report=lambda series_uid: results.latest_report_path(self.db, series_uid, job.pipeline),
            )

        return reading

    def _earlier_reports(self, job: Job) -> list[pydicom.Dataset]:
        """SRs of earlier jobs of this series and pipeline: the new results supersede them."""
        paths = results.earlier_report_paths(self.db, job.series_uid, job.pipeline, job.id)
        return [pydicom.dcmread(path) for path in paths if path.exists()]

    def _finish(
        self,
        job: Job,
        result: PipelineResult,
        outputs: list[tuple[str, str, Path]],
        timings: dict[str, float],
        reading: FollowUpReport | None = None,
    ) -> None:
        t = now()
        summary: dict[str, Any] = result.summary()
        summary["node_timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        if reading is not None:
            summary["followup"] = reading.summary()
        with self.db.transaction() as conn:
            row = job_state_and_lease_owner(conn, job.id)
            if row["state"] != JobState.RUNNING.value or row["lease_owner"] != self.worker_id:
                log.warning("job_lost_lease", job_id=job.id, state=row["state"])
                return
            if series_generation(conn, job.series_uid) != job.generation:
                mark_job_superseded_on_finish(conn, job.id, t, json.dumps(summary))
                record_transition(conn, job.id, "running", JobState.SUPERSEDED, "series changed while running")
                return
            for sop_uid, kind, path in outputs:
                results.record_result(conn, sop_uid, job.id, kind, path, t)
                for destination in job.destinations:
                    deliveries.queue_delivery(conn, job.id, sop_uid, destination, t)
            detail = (
                result.reason if result.status is ResultStatus.NOT_APPLICABLE else f"{len(result.findings)} findings"
            )
            mark_job_done(conn, job.id, t, json.dumps(summary), result.reason or None)
            record_transition(conn, job.id, "running", JobState.DONE, detail)
        log.info(
            "job_done",
            job_id=job.id,
            series_uid=job.series_uid,
            status=result.status.value,
            findings=len(result.findings),
            outputs=len(outputs),
            timings=summary["node_timings_s"],
        )

    def stop(self) -> None:
        self._stop.set()


class _LeaseHeartbeat:
    """Renews the job's lease while it runs, so a long job is not taken over by another worker."""

    def __init__(self, db: Database, job_id: int, worker_id: str, lease_s: float) -> None:
        self._args = (db, job_id, worker_id, lease_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"lease-{job_id}")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        db, job_id, worker_id, lease_s = self._args
        while not self._stop.wait(lease_s / 3):
            if not renew_lease(db, job_id, worker_id, lease_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def worker_process_main(settings_data: dict[str, Any], worker_id: str) -> None:
    """Entry point of a spawned worker process."""
    settings = WorkerSettings.model_validate(settings_data)
    configure_logging(settings.logging.level, settings.logging.format)
    structlog.contextvars.bind_contextvars(worker_id=worker_id)
    Worker(settings, worker_id).run_forever()
