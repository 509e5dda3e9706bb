"""The node as one service: index, spool, SCP, completeness monitor, workers (and, when
configured, the exporter and the HTTP API), started and stopped in the right order."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING

import structlog

from node.audit import AuditTrail
from node.audit import messages as audit_messages
from node.config import NodeConfig
from node.errors import ConfigError, NodeError
from node.export.outbox import Outbox
from node.export.superseded import withdrawal_policies
from node.export.transports import build_destinations
from node.index import jobs, series
from node.index.db import now
from node.receive.completeness import CompletenessMonitor
from node.receive.scp import StorageSCP
from node.route.planner import JobPlanner
from node.store.ingest import InstanceStore
from node.store.spool import Spool
from node.work.dispatch import Dispatcher
from node.work.supervisor import WorkerSupervisor
from node.work.worker import open_configured_index

if TYPE_CHECKING:
    from node.api.server import HttpServer

log = structlog.get_logger(__name__)

INCOMING_STALE_S = 3600.0


class NodeService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.boot_id = uuid.uuid4().hex[:8]
        data_dir = config.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        # Cluster mode: several receivers share the data dir (shared storage) and the index; leases in the
        # index, not a lock file, say who runs what.
        self.cluster = config.dispatch.engine == "celery"
        self._lock_file = None if self.cluster else _lock_data_dir(data_dir)
        self.db = open_configured_index(config)
        self.spool = Spool(data_dir)
        self.store = InstanceStore(self.db, self.spool, config.storage.min_free_disk_mb * 1024 * 1024)
        self.audit = AuditTrail.from_config(config.audit, data_dir, config.dicom.ae_title)
        self.scp = StorageSCP(config.dicom, self.store, self.audit)
        self.completeness = CompletenessMonitor(self.db, config.completeness, JobPlanner(config.routes))
        self.supervisor = WorkerSupervisor(config, self.db, self.boot_id)
        # Cluster mode: jobs go to the broker; `ainode worker` processes elsewhere run them.
        self.dispatcher = Dispatcher(self.db, config.dispatch) if self.cluster else None
        self.outbox = Outbox(
            self.db,
            build_destinations(dict(config.destinations)),
            config.delivery.retry,
            batch_size=config.delivery.batch_size,
            withdrawals=withdrawal_policies(config.destinations),
            results_root=self.spool.results_root,
            audit=self.audit,
        )
        self.http: HttpServer | None = None
        if config.http.enabled:
            from node.api.app import create_app
            from node.api.server import HttpServer

            app = create_app(config, self.db, self.store, workers_alive=self.supervisor.alive, audit=self.audit)
            self.http = HttpServer(app, config.http)
        self._stopped = threading.Event()

    def start(self) -> None:
        # Another receiver's temp file on shared storage is seconds old; a crashed one's is older.
        removed = self.spool.clear_incoming(older_than_s=INCOMING_STALE_S if self.cluster else 0.0)
        reindexed = self._reconcile_spool()
        # Cluster mode: running jobs belong to workers on other machines (their leases decide).
        requeued = 0 if self.cluster else self._requeue_orphaned_jobs()
        log.info(
            "node_starting",
            boot_id=self.boot_id,
            data_dir=str(self.config.storage.data_dir),
            temp_files_removed=removed,
            instances_reindexed=reindexed,
            jobs_requeued=requeued,
        )
        self.audit.start()
        self.audit.record(
            audit_messages.application_activity(self.audit.source, self.config.dicom.ae_title, started=True)
        )
        self.scp.start()
        self.completeness.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        else:
            self.supervisor.start()
        self.outbox.start(self.config.delivery.check_interval_s)
        if self.http is not None:
            self.http.start()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.http is not None:
            self.http.stop()  # first: no new STOW-RS uploads while the rest shuts down
        self.scp.stop()
        self.store.close()
        self.completeness.stop()
        self.supervisor.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.outbox.stop()
        self.audit.record(
            audit_messages.application_activity(self.audit.source, self.config.dicom.ae_title, started=False)
        )
        self.audit.stop()  # last: what the stages recorded while stopping is written out
        log.info("node_stopped", boot_id=self.boot_id)

    def run_until_signalled(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stopped.set())
        signal.signal(signal.SIGINT, lambda *_: self._stopped.set())
        self.start()
        try:
            self._stopped.wait()
        finally:
            self._stopped.clear()
            self.stop()

    def _reconcile_spool(self) -> int:
        """Files fsynced before a power loss but whose index rows were not yet on disk: index them."""
        known = series.known_instance_paths(self.db)
        count = 0
        for path in self.spool.iter_instance_files():
            if str(path) in known:
                continue
            try:
                self.store.index_spool_file(path, called_ae=self.config.dicom.ae_title)
                count += 1
            except NodeError as exc:
                # Acknowledged by an earlier version that did not check what it cannot index: moved out
                # of the spool (kept, beside it) and reported once, instead of failing at every start.
                kept = self.config.storage.data_dir / "unreadable" / path.relative_to(self.spool.root)
                kept.parent.mkdir(parents=True, exist_ok=True)
                path.replace(kept)
                log.error("spool_file_unreadable", path=str(kept), reason=str(exc))
        self.store.flush()
        return count

    def _requeue_orphaned_jobs(self) -> int:
        """Jobs running when the node last stopped belong to workers that no longer exist."""
        return jobs.requeue_running_jobs(self.db, "node restarted; worker gone")


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """One node per data dir: two would both think they own the running jobs."""
    lock_file = (data_dir / "node.lock").open("a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"storage.data_dir: {data_dir} is in use by another running node") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(json.dumps({"pid": os.getpid(), "since": now()}))
    lock_file.flush()
    return lock_file
