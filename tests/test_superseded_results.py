"""Superseded results out of the PACS (issue 11): each destination's ``superseded`` policy.

The superseding scenario of tests/test_end_to_end.py, one stage at a time and in-process: the real Philips
series is stored, its lung-nodule job runs and its results are delivered to three real Orthancs; a late slice
re-opens the series (the real ingest supersedes the done job), the re-run's results are delivered, and then
- ``keep`` (the default): both runs stay, as before;
- ``reject``: an IHE IOCM rejection note (KOS) reaches Orthanc, lists exactly the old objects, and dciodvfy
  finds no error in it;
- ``delete`` (orthanc-rest): only the re-run's SEG/SR/SC are left in Orthanc.
The model is stood in for by two drawn nodules (tests/test_result_uids.py does the same: the model is not
what is tested); the index, ingest, encoders, outbox, its C-STORE SCU and Orthanc REST client, and Orthanc are real.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from demo.paths import PHILIPS_CT
from node.cli.status_cmd import collect_status
from node.config import NodeConfig, parse_config
from node.export.backoff import RetryPolicy
from node.export.outbox import Outbox
from node.export.superseded import note_uid_seed, withdrawal_policies
from node.export.transports import build_destinations
from node.index.db import Database, now
from node.index.jobs import queue_job
from node.store.ingest import InstanceStore
from node.store.spool import Spool
from node.work.worker import Worker, WorkerSettings, index_path
from pipelines.base import CTVolume, ModelIdentity, Output, PipelineResult
from tests.dciodvfy import judge
from tests.encode_helpers import two_nodules
from tests.peers.net import wait_until
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.peers, pytest.mark.needs("philips-ct", "orthanc", "dciodvfy")]

REJECTION_NOTE_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
# The same warnings dciodvfy gives every object the node derives from this series (tests/test_encode_objects.py).
ACCEPTED_WARNINGS = ("Study ID", "Retired Person Name form")


class _DrawnNodules:
    model = ModelIdentity("drawn-nodules", "1", "")
    outputs = frozenset({Output.FINDINGS})

    def run(self, volume: CTVolume) -> PipelineResult:
        return two_nodules(volume)


class _Site:
    """One node installation (index, spool, worker, outbox) and its three PACS."""

    def __init__(self, tmp_path: Path, keep: OrthancPeer, reject: OrthancPeer, delete: OrthancPeer) -> None:
        def dimse(orthanc: OrthancPeer, **policy: str) -> dict[str, Any]:
            return {"type": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                    "calling_ae_title": "AINODE", "timeout_s": 10, **policy}  # fmt: skip

        self.config: NodeConfig = parse_config({
            "storage": {"data_dir": str(tmp_path / "node"), "min_free_disk_mb": 0},
            "destinations": {
                "keeps": dimse(keep),  # the default policy
                "rejects": dimse(reject, superseded="reject", rejection_reason="retention"),
                "deletes": {"type": "orthanc-rest", "url": delete.url, "superseded": "delete"},
            },
        })  # fmt: skip
        self.db = Database(index_path(self.config))
        self.spool = Spool(self.config.storage.data_dir)
        self.store = InstanceStore(self.db, self.spool, min_free_bytes=0)
        self.worker = Worker(WorkerSettings.from_config(self.config), "w1")
        self.worker._pipelines["lung-nodule"] = _DrawnNodules()  # type: ignore[assignment]  # duck-typed stand-in
        self.outbox = self.start_outbox()

    def start_outbox(self) -> Outbox:
        """The outbox as the node builds it at start-up (a restart after a crash is a new one)."""
        return Outbox(
            self.db,
            build_destinations(dict(self.config.destinations)),
            RetryPolicy(base_delay_s=0.1, max_delay_s=0.2),
            rng=random.Random(0),
            withdrawals=withdrawal_policies(self.config.destinations),
            results_root=self.spool.results_root,
        )

    def receive(self, paths: list[Path]) -> None:
        for path in paths:
            self.store.store_part10(path.read_bytes(), calling_ae="STORESCU", called_ae="AINODE")
        assert self.store.flush(60)

    def complete_and_run(self) -> int:
        """What the completeness monitor and a worker do: the series complete, one job, run."""
        with self.db.transaction() as conn:
            series = conn.execute("SELECT series_uid, study_uid, generation FROM series").fetchone()
            conn.execute("UPDATE series SET state = 'complete', completed_at = ? WHERE series_uid = ?",
                         (now(), series["series_uid"]))  # fmt: skip
            job_id = queue_job(conn, series_uid=series["series_uid"], study_uid=series["study_uid"],
                               generation=series["generation"], pipeline="lung-nodule", route="test",
                               destinations=list(self.config.destinations))  # fmt: skip
        assert self.worker.run_one()
        assert self.db.query("SELECT state FROM jobs WHERE id = ?", (job_id,))[0]["state"] == "done"
        return job_id

    def drain_outbox(self) -> None:
        """The outbox loop's passes until nothing is left to do (a pass that finds nothing returns 0)."""
        for _ in range(20):
            if not self.outbox.deliver_due() + self.outbox.withdraw_superseded():
                break
        undelivered = self.db.query("SELECT destination, state, last_error FROM deliveries WHERE state != 'sent'")
        assert not undelivered, [dict(r) for r in undelivered]

    def results_of(self, job_id: int, kind: str | None = None) -> set[str]:
        rows = self.db.query("SELECT sop_instance_uid, kind FROM results WHERE job_id = ?", (job_id,))
        return {r["sop_instance_uid"] for r in rows if kind is None or r["kind"] == kind}


def _late_slice(tmp_path: Path) -> Path:
    """One more slice below the series' lowest one (as tests/test_end_to_end.py sends)."""
    files = sorted(PHILIPS_CT.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    lowest, second = (pydicom.dcmread(p) for p in files[:2])
    step = float(second.ImagePositionPatient[2]) - float(lowest.ImagePositionPatient[2])
    lowest.SOPInstanceUID = generate_uid()
    lowest.file_meta.MediaStorageSOPInstanceUID = lowest.SOPInstanceUID
    lowest.ImagePositionPatient[2] = float(lowest.ImagePositionPatient[2]) - step
    late = tmp_path / "late.dcm"
    lowest.save_as(late)
    return late


def _instances(orthanc: OrthancPeer) -> dict[str, str]:
    """{SOP Instance UID: Orthanc id} of everything the Orthanc holds."""
    return {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in orthanc.get("/instances?expand")}


def _evidence(note: pydicom.Dataset) -> set[str]:
    return {
        ref.ReferencedSOPInstanceUID
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def _content_references(note: pydicom.Dataset) -> set[str]:
    return {
        ref.ReferencedSOPInstanceUID for item in note.ContentSequence for ref in item.get("ReferencedSOPSequence", [])
    }


def test_superseded_results_are_kept_rejected_or_deleted_as_each_destination_says(tmp_path: Path) -> None:
    node_known = {"node": ("AINODE", "127.0.0.1", 1)}
    with (
        OrthancPeer(tmp_path / "keep", modalities=node_known) as keep,
        OrthancPeer(tmp_path / "reject", modalities=node_known) as reject,
        OrthancPeer(tmp_path / "delete") as delete,
    ):
        site = _Site(tmp_path, keep, reject, delete)
        site.receive(sorted(PHILIPS_CT.iterdir()))
        first = site.complete_and_run()
        site.drain_outbox()
        old = site.results_of(first)
        assert len(old) >= 3 and all(set(_instances(o)) == old for o in (keep, reject, delete))

        site.receive([_late_slice(tmp_path)])  # re-opens the series: the first job is superseded
        assert site.db.query("SELECT state FROM jobs WHERE id = ?", (first,))[0]["state"] == "superseded"
        second = site.complete_and_run()
        site.drain_outbox()
        new = site.results_of(second, "SEG") | site.results_of(second, "SR") | site.results_of(second, "OT")
        assert new and not new & old

        # keep: both runs, as before the option existed.
        assert set(_instances(keep)) == old | new

        # delete: only the re-run's SEG/SR/SC are left.
        assert set(_instances(delete)) == new

        # reject: one rejection note, in the source's study, listing exactly the old objects; valid DICOM.
        [note_uid] = site.results_of(second, "KO")
        assert set(_instances(reject)) == old | new | {note_uid}
        stored = httpx.get(f"{reject.url}/instances/{_instances(reject)[note_uid]}/file", timeout=30)
        note_path = tmp_path / "note.dcm"
        note_path.write_bytes(stored.content)
        note = pydicom.dcmread(note_path)
        assert note.SOPClassUID == REJECTION_NOTE_CLASS and note.Modality == "KO"
        title = note.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator) == ("113039", "DCM")  # Data Retention Policy Expired
        assert _evidence(note) == old and _content_references(note) == old
        assert note.StudyInstanceUID == pydicom.dcmread(next(PHILIPS_CT.iterdir())).StudyInstanceUID
        judge(note_path, "iocm-rejection-note", ACCEPTED_WARNINGS)

        withdrawals = site.db.query("SELECT destination, method, state FROM withdrawals")
        assert sorted({(w["destination"], w["method"], w["state"]) for w in withdrawals}) == [
            ("deletes", "delete", "deleted"),
            ("rejects", "reject", "noted"),
        ]
        assert len(withdrawals) == 2 * len(old)
        assert collect_status(site.db)["withdrawals_by_state"] == {"delete deleted": len(old), "reject noted": len(old)}
        # Nothing more to plan, also after a restart: nothing is rejected or deleted twice.
        assert site.start_outbox().withdraw_superseded() == 0


def test_withdrawals_survive_an_outage_and_a_crash_without_doing_anything_twice(tmp_path: Path) -> None:
    node_known = {"node": ("AINODE", "127.0.0.1", 1)}
    with (
        OrthancPeer(tmp_path / "keep", modalities=node_known) as keep,
        OrthancPeer(tmp_path / "reject", modalities=node_known) as reject,
        OrthancPeer(tmp_path / "delete") as delete,
    ):
        site = _Site(tmp_path, keep, reject, delete)
        site.receive(sorted(PHILIPS_CT.iterdir()))
        site.complete_and_run()
        site.drain_outbox()
        site.receive([_late_slice(tmp_path)])
        second = site.complete_and_run()
        new = site.results_of(second)
        for _ in range(5):
            site.outbox.deliver_due()
        # The Orthanc to delete from is down when the deletions become due: they wait for a retry.
        delete.stop()
        assert site.outbox.withdraw_superseded() > 0
        waiting = site.db.query("SELECT state, last_error FROM withdrawals WHERE method = 'delete'")
        assert waiting and all(w["state"] == "retry" and "cannot connect" in w["last_error"] for w in waiting)
        [note_uid] = site.results_of(second, "KO")
        # The node died before the rejection's transaction committed: none of it is in the index.
        with site.db.transaction() as conn:
            conn.execute("DELETE FROM withdrawals WHERE method = 'reject'")
            conn.execute("DELETE FROM deliveries WHERE result_sop_instance_uid = ?", (note_uid,))
            conn.execute("DELETE FROM results WHERE sop_instance_uid = ?", (note_uid,))
        restarted = site.start_outbox()
        assert restarted.withdraw_superseded() > 0
        assert site.results_of(second, "KO") == {note_uid}, "the note planned again is the same object"
        delete.start()

        def withdrawn() -> bool:
            restarted.deliver_due()
            restarted.withdraw_superseded()
            states = {w["state"] for w in site.db.query("SELECT state FROM withdrawals")}
            return states == {"noted", "deleted"} and _all_sent(site.db)

        wait_until(withdrawn, 60, "the deletions and the note after Orthanc came back", interval_s=0.2)
        assert set(_instances(delete)) == new - {note_uid}
        assert note_uid in _instances(reject)
        # Another installation (a wiped data dir, job ids from 1 again) never makes the same note.
        assert note_uid_seed("a" * 32, second) != note_uid_seed("b" * 32, second)


def _all_sent(db: Database) -> bool:
    return all(d["state"] == "sent" for d in db.query("SELECT state FROM deliveries"))


def test_nothing_is_withdrawn_before_the_new_run_is_all_there_and_an_unreadable_old_result_is_reported(
    tmp_path: Path,
) -> None:
    """The planning rules on the index alone (no PACS is reached: nothing is due to be sent)."""
    from node.export.superseded import WithdrawalPolicy, plan_withdrawals
    from node.index.states import WithdrawalMethod

    db = Database(tmp_path / "index.sqlite")
    t = now()
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO studies (study_uid, first_received_at, last_received_at) VALUES ('1.2', ?, ?)", (t, t)
        )
        conn.execute("""INSERT INTO series (series_uid, study_uid, state, generation, first_received_at,
                        last_received_at) VALUES ('1.2.3', '1.2', 'complete', 2, ?, ?)""", (t, t))  # fmt: skip
        for generation in (1, 2):
            job_id = queue_job(conn, series_uid="1.2.3", study_uid="1.2", generation=generation,
                               pipeline="lung-nodule", route="r", destinations=["pacs"])  # fmt: skip
            conn.execute(
                "UPDATE jobs SET state = ? WHERE id = ?", ("superseded" if generation == 1 else "done", job_id)
            )
            for n in range(2):
                uid = f"2.25.{generation}{n}"
                conn.execute("INSERT INTO results VALUES (?, ?, 'SR', ?, ?)", (uid, job_id, str(tmp_path / uid), t))
                conn.execute("""INSERT INTO deliveries (job_id, result_sop_instance_uid, destination, state,
                                next_attempt_at, created_at, updated_at) VALUES (?, ?, 'pacs', 'sent', ?, ?, ?)""",
                             (job_id, uid, t, t, t))  # fmt: skip
        conn.execute("UPDATE deliveries SET state = 'retry' WHERE result_sop_instance_uid = '2.25.21'")
    policies = {"pacs": WithdrawalPolicy(WithdrawalMethod.REJECT, "quality")}
    # One of the new run's objects is still on its way: the old ones stay where they are.
    assert plan_withdrawals(db, policies, tmp_path / "results") == 0
    assert not db.query("SELECT * FROM withdrawals")
    db.query("UPDATE deliveries SET state = 'sent'")
    # Now due; the old results' files are gone, so no note can name them: said once, on each object.
    assert plan_withdrawals(db, policies, tmp_path / "results") == 0
    rows = db.query("SELECT result_sop_instance_uid, state, last_error FROM withdrawals ORDER BY 1")
    assert [(r["result_sop_instance_uid"], r["state"]) for r in rows] == [("2.25.10", "dead"), ("2.25.11", "dead")]
    assert all("cannot plan" in r["last_error"] for r in rows)
    assert plan_withdrawals(db, policies, tmp_path / "results") == 0  # and not again
    assert len(db.query("SELECT * FROM withdrawals")) == 2
