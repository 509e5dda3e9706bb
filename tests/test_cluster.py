"""Cluster mode end to end, every component real: PostgreSQL (the index), RabbitMQ (Celery's broker), two
`ainode serve` receivers sharing one data dir, two `ainode worker` Celery workers running the lung-nodule
pipeline, a real Orthanc as the PACS, DCMTK storescu as the senders.

The studies are copies of the shared 64-slice Philips chest CT under new UIDs (a series the pipeline
completes in a few seconds on one CPU thread, with SEG + SR + Grad-CAM SC results). The tests share one
cluster (module scope) and run in order: six studies, then a worker killed mid-job, then the broker and the
broker stopped for OUTAGE_S (the index outage test is not
finished: see the issue's closing note).

"Exactly once" is checked on both sides: the index has one job per series, each result object has one
delivery that went pending → sending → sent once, and Orthanc holds exactly the objects the index recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from demo.node_process import REPO_ROOT, NodeProcess
from demo.paths import PHILIPS_CT
from node.index.db import Database
from node.index.postgres import PostgresDatabase
from tests.peers.dcmtk import storescu
from tests.peers.net import wait_until
from tests.peers.orthanc import OrthancPeer
from tests.peers.postgres import PostgresServer
from tests.peers.rabbitmq import RabbitBroker

pytestmark = [pytest.mark.e2e, pytest.mark.needs("postgresql", "rabbitmq", "orthanc", "dcmtk", "philips-ct")]

OUTAGE_S = 30  # the figure: the broker, then the index, down this long during a run
LEASE_S = 6  # short, so the killed worker's job is taken over within seconds
JOB_DEADLINE_S = 240


def _copy_with_new_uids(source: Path, target: Path) -> tuple[str, str]:
    """The series in ``source`` as a new study (new study, series and SOP instance UIDs); its two UIDs."""
    target.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target / path.name, enforce_file_format=True)
    return study_uid, series_uid


class Cluster:
    def __init__(self, root: Path, dsn: str) -> None:
        self.root = root
        self.dsn = dsn
        self.broker = RabbitBroker()
        self.orthanc: OrthancPeer | None = None
        self.receivers: list[NodeProcess] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._db: Database | None = None

    def start(self) -> None:
        self.broker.start()
        password = self.root / "broker-password"
        password.write_text("guest\n")
        shared = self.root / "shared-data"  # the storage every receiver and worker mounts
        first = NodeProcess(self.root / "receiver-1")
        second = NodeProcess(self.root / "receiver-2")
        self.orthanc = OrthancPeer(
            self.root / "orthanc", modalities={"node": (first.ae_title, "127.0.0.1", first.port)}
        ).start()
        config: dict[str, Any] = {
            "storage": {"data_dir": str(shared), "min_free_disk_mb": 0},
            "index": {"backend": "postgresql", "postgresql_dsn": self.dsn},
            "dispatch": {
                "engine": "celery",
                "broker_url": self.broker.url,
                "broker_password_file": str(password),
                "pipeline_queues": {"lung-nodule": "gpu"},
                "worker_queues": ["gpu"],
                "republish_after_s": 60,
                "check_interval_s": 0.25,
            },
            "workers": {"lease_s": LEASE_S, "torch_threads": 1, "device": "cpu", "max_attempts": 3},
            "completeness": {"settle_s": 2, "quiet_period_s": 15, "check_interval_s": 0.25},
            "logging": {"level": "INFO"},
            "delivery": {"check_interval_s": 0.25, "retry": {"base_delay_s": 0.5, "max_delay_s": 2}},
            "destinations": {
                "pacs": {
                    "type": "dimse",
                    "ae_title": self.orthanc.aet,
                    "host": "127.0.0.1",
                    "port": self.orthanc.dicom_port,
                    "calling_ae_title": first.ae_title,
                    "timeout_s": 10,
                }
            },
            "routes": [
                {
                    "name": "chest-ct",
                    "when": {"tag": "Modality", "equals": "CT"},
                    "pipelines": ["lung-nodule"],
                    "destinations": ["pacs"],
                }
            ],
        }
        routes = config.pop("routes")
        for receiver in (first, second):
            receiver.reconfigure(config)
            receiver.config["routes"] = routes
            receiver.reconfigure({})
            receiver.start(timeout_s=60)
            self.receivers.append(receiver)
        for name in ("worker-a", "worker-b"):
            self.start_worker(name)

    def start_worker(self, name: str) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "node", "worker", "--config", str(self.receivers[0].config_path),
             "--worker-id", name],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=True,
        )  # fmt: skip
        log.close()

    def kill_worker(self, name: str) -> None:
        """kill -9, as a GPU server losing power would."""
        process = self.workers.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = PostgresDatabase(self.dsn)
        return self._db

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(sql, params)]

    def worker_log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for name in list(self.workers):
            process = self.workers.pop(name)
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for receiver in self.receivers:
            receiver.stop()
        if self.orthanc is not None:
            self.orthanc.stop()
        if self._db is not None:
            self._db.close()
        self.broker.close()


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str, str]]:
    """Nine copies of the Philips series as nine studies: (folder, study UID, series UID)."""
    root = tmp_path_factory.mktemp("studies")
    out = []
    for n in range(9):
        folder = root / f"study-{n}"
        study_uid, series_uid = _copy_with_new_uids(PHILIPS_CT, folder)
        out.append((folder, study_uid, series_uid))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("cluster"), postgres_server.new_database())
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _send(receiver: NodeProcess, folders: list[Path], verbose: bool = False) -> subprocess.CompletedProcess[str]:
    # -v: storescu reports each response's status (it exits 0 when only some files were refused).
    return storescu(receiver.port, folders, called=receiver.ae_title, calling="STORESCU",
                    extra_args=["-v"] if verbose else None)  # fmt: skip


def _jobs_of(cluster: Cluster, series_uid: str) -> list[dict[str, Any]]:
    return cluster.rows("SELECT * FROM jobs WHERE series_uid = ? ORDER BY id", (series_uid,))


def _delivered(cluster: Cluster, job_id: int) -> bool:
    rows = cluster.rows("SELECT state FROM deliveries WHERE job_id = ?", (job_id,))
    return bool(rows) and all(r["state"] == "sent" for r in rows)


def _wait_done_and_delivered(cluster: Cluster, series_uid: str, timeout_s: float = JOB_DEADLINE_S) -> dict[str, Any]:
    def done() -> bool:
        jobs = _jobs_of(cluster, series_uid)
        return bool(jobs) and jobs[-1]["state"] == "done" and _delivered(cluster, jobs[-1]["id"])

    try:
        wait_until(done, timeout_s, f"the job of series {series_uid} done and delivered", interval_s=0.5)
    except TimeoutError:
        logs = "\n".join(cluster.worker_log(n)[-1500:] for n in ("worker-a", "worker-b", "worker-c"))
        raise AssertionError(f"jobs: {_jobs_of(cluster, series_uid)}\nworker logs:\n{logs}") from None
    return _jobs_of(cluster, series_uid)[-1]


def _assert_results_once(cluster: Cluster, study_uid: str, job_id: int) -> None:
    """The job's result objects: each delivered exactly once, and exactly these in Orthanc for the study."""
    results = {r["sop_instance_uid"] for r in cluster.rows("SELECT sop_instance_uid FROM results WHERE job_id = ?",
                                                           (job_id,))}  # fmt: skip
    assert len(results) >= 3  # SEG, SR and at least one Grad-CAM SC
    for delivery in cluster.rows("SELECT id, attempts FROM deliveries WHERE job_id = ?", (job_id,)):
        events = cluster.rows("SELECT to_state FROM delivery_events WHERE delivery_id = ? ORDER BY id",
                              (delivery["id"],))  # fmt: skip
        assert [e["to_state"] for e in events] == ["sending", "sent"], events
        assert delivery["attempts"] == 1
    assert cluster.orthanc is not None
    in_pacs = set()
    for series in cluster.orthanc.series_of_study(study_uid):
        if series["00080060"]["Value"][0] == "CT":
            continue
        series_uid = series["0020000E"]["Value"][0]
        for instance in cluster.orthanc.get(f"/series/{cluster.orthanc.lookup_id(series_uid)}/instances"):
            in_pacs.add(instance["MainDicomTags"]["SOPInstanceUID"])
    assert in_pacs == results


def test_six_studies_from_two_senders_to_two_receivers_are_processed_once(
    cluster: Cluster, studies: list[tuple[Path, str, str]]
) -> None:
    first, second = cluster.receivers
    batch = studies[:6]
    sent: dict[int, subprocess.CompletedProcess[str]] = {}
    senders = [
        threading.Thread(target=lambda: sent.__setitem__(1, _send(first, [s[0] for s in batch[:3]]))),
        threading.Thread(target=lambda: sent.__setitem__(2, _send(second, [s[0] for s in batch[3:]]))),
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=300)
    assert all(done.returncode == 0 for done in sent.values()), {k: v.stderr[-500:] for k, v in sent.items()}
    for _, study_uid, series_uid in batch:
        job = _wait_done_and_delivered(cluster, series_uid)
        assert len(_jobs_of(cluster, series_uid)) == 1  # completeness decided once, by one receiver
        trail = [e["to_state"] for e in cluster.rows("SELECT to_state FROM job_events WHERE job_id = ? ORDER BY id",
                                                     (job["id"],))]  # fmt: skip
        assert trail == ["queued", "running", "done"]
        _assert_results_once(cluster, study_uid, job["id"])
    # Both receivers took instances, both workers ran jobs; every job went to the GPU class's queue.
    assert {r["calling_ae"] for r in cluster.rows("SELECT DISTINCT calling_ae FROM series")} == {"STORESCU"}
    owners = {e["detail"] for e in cluster.rows("SELECT detail FROM job_events WHERE to_state = 'running'")}
    assert {"worker worker-a", "worker worker-b"} <= owners, owners
    assert {r["queue"] for r in cluster.rows("SELECT queue FROM dispatches")} == {"ainode.gpu"}


def test_a_worker_killed_mid_job_its_job_is_redelivered_and_results_stay_once(
    cluster: Cluster, studies: list[tuple[Path, str, str]]
) -> None:
    folder, study_uid, series_uid = studies[6]
    assert _send(cluster.receivers[0], [folder]).returncode == 0

    def running() -> bool:
        jobs = _jobs_of(cluster, series_uid)
        return bool(jobs) and jobs[0]["state"] == "running"

    wait_until(running, 120, "the job to be running", interval_s=0.05)
    owner = _jobs_of(cluster, series_uid)[0]["lease_owner"]
    cluster.kill_worker(owner)
    try:
        job = _wait_done_and_delivered(cluster, series_uid)
        assert job["attempts"] == 2
        events = cluster.rows("SELECT to_state, detail FROM job_events WHERE job_id = ? ORDER BY id", (job["id"],))
        assert [e["to_state"] for e in events] == ["queued", "running", "running", "done"]
        assert f"lease of {owner} expired" in events[2]["detail"]
        _assert_results_once(cluster, study_uid, job["id"])
    finally:
        cluster.start_worker(owner)


def test_broker_down_the_job_waits_in_the_index_and_nothing_acknowledged_is_lost(
    cluster: Cluster, studies: list[tuple[Path, str, str]]
) -> None:
    first = cluster.receivers[0]
    # 1. RabbitMQ down: receiving goes on, the job waits queued in the index, published once it is back.
    folder, study_uid, series_uid = studies[7]
    cluster.broker.stop()
    down_since = time.monotonic()
    assert _send(first, [folder]).returncode == 0  # the broker is not on the receiving path
    wait_until(lambda: bool(_jobs_of(cluster, series_uid)), 60, "the job to be queued", interval_s=0.25)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))
    assert [j["state"] for j in _jobs_of(cluster, series_uid)] == ["queued"]
    cluster.broker.start()
    job = _wait_done_and_delivered(cluster, series_uid)
    _assert_results_once(cluster, study_uid, job["id"])

    # Nothing acknowledged is lost: every file in the shared spool is in the index.
    spool = Path(first.config["storage"]["data_dir"]) / "spool"
    files = {str(p) for p in spool.glob("*/*/*.dcm")}
    indexed = {r["path"] for r in cluster.rows("SELECT path FROM instances")}
    assert files <= indexed
