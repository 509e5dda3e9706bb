"""Result UIDs: the same when a job is taken again after a crash, new on a new installation.

A PACS keeps the first object it stored under a SOP Instance UID. A node whose data dir was wiped (a
re-installed site) numbers its jobs from 1 again; its results must not reuse the UIDs of the old
installation's results, or Orthanc silently keeps the stale ones. The worker runs in-process here with a
stand-in pipeline (two drawn nodules: the model is not what is tested); the encoder, the index and
Orthanc are real.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from demo.paths import PHILIPS_CT
from node.config import parse_config
from node.index.db import Database, now
from node.index.jobs import queue_job
from node.store.ingest import InstanceStore
from node.store.spool import Spool
from node.work.worker import Worker, WorkerSettings, index_path
from pipelines.base import CTVolume, ModelIdentity, Output, PipelineResult
from tests.encode_helpers import two_nodules
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.peers, pytest.mark.needs("philips-ct", "orthanc")]


class _DrawnNodules:
    """Stands in for the lung-nodule model: two spheres drawn into the real CT geometry."""

    name = "lung-nodule"
    model = ModelIdentity("drawn-nodules", "1", "")
    outputs = frozenset({Output.FINDINGS})

    def run(self, volume: CTVolume) -> PipelineResult:
        return two_nodules(volume)


def _install(data_dir: Path) -> Worker:
    """A fresh installation holding the Philips series, complete, with one lung-nodule job queued."""
    config = parse_config({"storage": {"data_dir": str(data_dir), "min_free_disk_mb": 0}})
    db = Database(index_path(config))
    store = InstanceStore(db, Spool(data_dir), min_free_bytes=0)
    for path in sorted(PHILIPS_CT.iterdir()):
        store.store_part10(path.read_bytes(), calling_ae="STORESCU", called_ae="AINODE")
    assert store.flush(60)
    store.close()
    with db.transaction() as conn:
        series = conn.execute("SELECT series_uid, study_uid, generation FROM series").fetchone()
        conn.execute("UPDATE series SET state = 'complete', completed_at = ? WHERE series_uid = ?",
                     (now(), series["series_uid"]))  # fmt: skip
        queue_job(conn, series_uid=series["series_uid"], study_uid=series["study_uid"],
                  generation=series["generation"], pipeline="lung-nodule", route="test", destinations=[])  # fmt: skip
    worker = Worker(WorkerSettings.from_config(config), "w1")
    worker._pipelines["lung-nodule"] = _DrawnNodules()
    return worker


def _results(worker: Worker) -> dict[str, Path]:
    return {r["sop_instance_uid"]: Path(r["path"]) for r in worker.db.query("SELECT * FROM results")}


def test_result_uids_differ_between_installations_and_repeat_when_a_job_is_retaken(tmp_path: Path) -> None:
    first = _install(tmp_path / "first-install")
    assert first.run_one()
    first_results = _results(first)
    assert first_results and first.db.query("SELECT state FROM jobs")[0]["state"] == "done"

    # The worker died after encoding, before anything was recorded: the job is taken again (same
    # installation, same job id) and must produce the very same UIDs.
    with first.db.transaction() as conn:
        conn.execute("DELETE FROM results")
        conn.execute("UPDATE jobs SET state = 'running', lease_owner = 'dead', lease_expires_at = 0")
    assert first.run_one()
    assert set(_results(first)) == set(first_results)

    # The data dir is wiped and the node re-installed: job 1 again on the same series.
    second = _install(tmp_path / "second-install")
    assert second.db.installation_id() != first.db.installation_id()
    assert second.run_one()
    second_results = _results(second)
    assert second.db.query("SELECT id FROM jobs")[0]["id"] == first.db.query("SELECT id FROM jobs")[0]["id"]
    assert not set(second_results) & set(first_results), "a new installation reused result UIDs"

    # What the PACS sees: both installations' reports are stored, none silently dropped as a duplicate.
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        for path in [*first_results.values(), *second_results.values()]:
            orthanc.upload(path)
        study_uid = str(pydicom.dcmread(next(iter(first_results.values()))).StudyInstanceUID)
        reports = [s for s in orthanc.series_of_study(study_uid) if s["00080060"]["Value"][0] == "SR"]
        assert len(reports) == 2
        assert orthanc.instance_count() == len(first_results) + len(second_results)


def test_installation_id_is_created_once_and_kept(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    ident = db.installation_id()
    assert len(ident) == 32
    db.close()
    assert Database(tmp_path / "index.sqlite").installation_id() == ident
    assert Database(tmp_path / "other.sqlite").installation_id() != ident
