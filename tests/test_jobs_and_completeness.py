"""Job state machine (leases, attempts, trail), completeness geometry rules, worker supervision."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from demo.node_process import NodeProcess
from demo.paths import SIEMENS_CT as SIEMENS
from node.index.db import Database
from node.index.jobs import claim_next_job, finish_job_failed, queue_job, renew_lease
from node.receive.completeness import judge_geometry
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.net import wait_until

pytestmark = pytest.mark.peers


def _db_with_series(open_test_index: Callable[[], Database]) -> Database:
    db = open_test_index()
    with db.transaction() as conn:
        conn.execute("INSERT INTO studies VALUES ('1.2', '', '', '', '', '', 0, 0)")
        conn.execute(
            """INSERT INTO series (series_uid, study_uid, state, first_received_at, last_received_at)
               VALUES ('1.2.3', '1.2', 'complete', 0, 0)"""
        )
        for pipeline in ("a", "b"):
            queue_job(conn, series_uid="1.2.3", study_uid="1.2", generation=1, pipeline=pipeline, route="r",
                      destinations=["pacs"])  # fmt: skip
    return db


def test_jobs_are_claimed_in_order_and_leases_protect_them(open_test_index: Callable[[], Database]) -> None:
    db = _db_with_series(open_test_index)
    first = claim_next_job(db, "w1", lease_s=60, max_attempts=2)
    second = claim_next_job(db, "w2", lease_s=60, max_attempts=2)
    assert first is not None and second is not None
    assert (first.pipeline, second.pipeline) == ("a", "b")
    assert first.destinations == ("pacs",)
    assert claim_next_job(db, "w3", lease_s=60, max_attempts=2) is None  # both leased
    assert renew_lease(db, first.id, "w1", 60)
    assert not renew_lease(db, first.id, "w2", 60)  # not w2's job


def test_expired_lease_is_taken_again_then_fails_after_max_attempts(open_test_index: Callable[[], Database]) -> None:
    db = _db_with_series(open_test_index)
    job = claim_next_job(db, "crashed-worker", lease_s=0.01, max_attempts=2)
    assert job is not None and job.attempts == 1
    time.sleep(0.05)
    again = claim_next_job(db, "w2", lease_s=0.01, max_attempts=2)
    assert again is not None and again.id == job.id and again.attempts == 2
    time.sleep(0.05)
    # Attempts exhausted: the job fails with the reason instead of looping forever; next job is taken.
    other = claim_next_job(db, "w3", lease_s=60, max_attempts=2)
    assert other is not None and other.pipeline == "b"
    row = db.query("SELECT state, reason FROM jobs WHERE id = ?", (job.id,))[0]
    assert row["state"] == "failed"
    assert "w2 stopped during attempt 2 of 2" in row["reason"]
    trail = [(r["from_state"], r["to_state"]) for r in db.query(
        "SELECT from_state, to_state FROM job_events WHERE job_id = ? ORDER BY id", (job.id,))]  # fmt: skip
    assert trail == [(None, "queued"), ("queued", "running"), ("running", "running"), ("running", "failed")]


def test_failing_a_job_records_the_reason(open_test_index: Callable[[], Database]) -> None:
    db = _db_with_series(open_test_index)
    job = claim_next_job(db, "w1", lease_s=60, max_attempts=2)
    assert job is not None
    finish_job_failed(db, job.id, "ValueError: boom")
    row = db.query("SELECT state, reason, finished_at FROM jobs WHERE id = ?", (job.id,))[0]
    assert (row["state"], row["reason"]) == ("failed", "ValueError: boom")
    assert row["finished_at"] is not None


def _rows(positions: list[list[float]], iop: list[float] | None = None, **extra: object) -> list[dict[str, object]]:
    iop = iop or [1, 0, 0, 0, 1, 0]
    return [{"image_position": json.dumps(p), "image_orientation": json.dumps(iop), "number_of_frames": None,
             "images_in_acquisition": None, **extra} for p in positions]  # fmt: skip


def test_geometry_judgement() -> None:
    even = [[0, 0, -2.5 * k] for k in range(10)]
    assert judge_geometry(_rows(even), 0.1).complete
    gap = [p for k, p in enumerate(even) if k != 4]
    assert not judge_geometry(_rows(gap), 0.1).complete
    assert "gap" in judge_geometry(_rows(gap), 0.1).reason
    duplicate = [*even, even[3]]
    assert not judge_geometry(_rows(duplicate), 0.1).complete
    # Oblique: positions step along the normal of a tilted plane; order of arrival does not matter.
    c, s = 0.8, 0.6
    iop = [1, 0, 0, 0, c, s]
    normal = [0, -s, c]
    oblique = [[5, 3 + 1.25 * k * normal[1], 7 + 1.25 * k * normal[2]] for k in reversed(range(12))]
    assert judge_geometry(_rows(oblique, iop), 0.1).complete
    assert not judge_geometry(_rows(even, images_in_acquisition=12), 0.1).complete
    assert judge_geometry(_rows(even, images_in_acquisition=10), 0.1).complete
    multiframe = [{"image_position": None, "image_orientation": None, "number_of_frames": 80,
                   "images_in_acquisition": None}]  # fmt: skip
    assert judge_geometry(multiframe, 0.1).complete
    assert not judge_geometry(_rows(even[:2]), 0.1).complete


@pytest.mark.needs("siemens-ct", "dcmtk")
def test_job_past_its_timeout_fails_with_reason_and_worker_is_replaced(tmp_path: Path) -> None:
    # Loading and summarising 99 real slices takes about a second: a 0.2 s limit must stop it.
    with NodeProcess(tmp_path, {"workers": {"processes": 1, "job_timeout_s": 0.2}}) as node:
        assert storescu(node.port, [SIEMENS], called=node.ae_title).returncode == 0

        def failed() -> bool:
            return bool(node.db().query("SELECT 1 FROM jobs WHERE state = 'failed'"))

        wait_until(failed, 60, "the job to time out")
        reason = node.db().query("SELECT reason FROM jobs WHERE state = 'failed'")[0]["reason"]
        assert "timed out after" in reason
        wait_until(lambda: node.log_text().count('"worker_started"') >= 2, 30, "a replacement worker")
        assert echoscu(node.port, called=node.ae_title, calling="STORESCU").returncode == 0


@pytest.mark.needs("dcmtk")
def test_dead_worker_is_replaced(tmp_path: Path) -> None:
    with NodeProcess(tmp_path) as node:
        wait_until(lambda: '"worker_started"' in node.log_text(), 30, "the worker")
        line = next(ln for ln in node.log_text().splitlines() if '"worker_started"' in ln)
        os.kill(json.loads(line)["pid"], signal.SIGKILL)
        wait_until(lambda: node.log_text().count('"worker_started"') >= 2, 30, "a replacement worker")


def test_workers_receive_their_settings_and_no_secrets() -> None:
    """A spawned worker gets its settings as JSON: what it needs round-trips; secrets and routes stay home."""
    import json

    from node.api.secret_hash import token_digest
    from node.config import parse_config
    from node.work.supervisor import worker_payload
    from node.work.worker import WorkerSettings

    config = parse_config(
        {
            "http": {"auth": {"credentials": [{"name": "ops", "secret_hash": token_digest("top-secret-1")}]}},
            "destinations": {"pacs": {"type": "stow-rs", "url": "http://127.0.0.1:1/dicom-web",
                                      "auth": {"type": "basic", "username": "u", "password": "pacs-password"}}},
            "workers": {"device": "cpu", "torch_threads": 3,
                        "pipeline_options": {"lung-nodule": {"detection_threshold": 0.4}}},
        }
    )  # fmt: skip
    payload = worker_payload(config)
    text = json.dumps(payload)
    assert token_digest("top-secret-1") not in text and "pacs-password" not in text and "**" not in text
    again = WorkerSettings.model_validate(payload)  # what worker_process_main does
    assert again == WorkerSettings.from_config(config)
    assert again.workers.pipeline_options == {"lung-nodule": {"detection_threshold": 0.4}}
    assert again.pipelines == ["lung-nodule"]  # the default route's pipeline, built when the worker starts
