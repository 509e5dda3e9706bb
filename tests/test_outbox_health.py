"""The outbox's outage logic on a controlled clock: destination health, capped probes, dead letter by age,
result sets held together, the index migration that brought the columns.

Fake destination and clock: hours of outage cannot be had from a real peer inside a test. The real Orthanc
outages (90 s, 10 min) are in tests/test_outage.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from demo.outage import ResultSet, record_finished_job
from node.errors import DeliveryError
from node.export import outbox as outbox_module
from node.export.backoff import RetryPolicy
from node.export.destinations import DeliveryReport, FileOutcome
from node.export.outbox import Outbox, retry_delivery
from node.index.db import SCHEMA_VERSION, Database, now

pytestmark = pytest.mark.unit

CAP_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.t = now()

    def __call__(self) -> float:
        return self.t


class FakeDestination:
    """Down (refuses at once) until ``up`` is set; records each send as the list of modalities, in order."""

    name = "pacs"

    def __init__(self) -> None:
        self.up = False
        self.pings = 0
        self.sends: list[list[str]] = []
        self.transient_once: set[str] = set()  # modalities refused transiently once, the peer answering

    def _refuse(self) -> None:
        if not self.up:
            raise DeliveryError("cannot connect: connection refused at once; will retry", permanent=False)

    def ping(self) -> None:
        self.pings += 1
        self._refuse()

    def send(self, paths: Sequence[Path]) -> DeliveryReport:
        self._refuse()
        kinds = [p.name.split("-")[0] for p in paths]
        self.sends.append(kinds)
        outcomes: list[FileOutcome] = []
        for path, kind in zip(paths, kinds, strict=True):
            if any(not o.delivered for o in outcomes):  # like the real transports: nothing after a retry
                outcomes.append(FileOutcome.failure(path, None, "not sent: an earlier object", permanent=False))
            elif kind in self.transient_once:
                self.transient_once.discard(kind)
                outcomes.append(FileOutcome.failure(path, None, "out of resources (0xA700)", permanent=False))
            else:
                outcomes.append(FileOutcome.success(path, None))
        return DeliveryReport(self.name, tuple(outcomes))


def _result_files(folder: Path, study_uid: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in ("OT", "SR", "SEG"):  # stored in this order: the outbox must reorder
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.Modality = kind
        path = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(outbox_module, "now", c)
    return c


def _outbox(
    tmp_path: Path, clock: Clock, give_up_after_s: float = 86400
) -> tuple[Outbox, FakeDestination, list[ResultSet]]:
    db = Database(tmp_path / "index.sqlite")
    destination = FakeDestination()
    policy = RetryPolicy(base_delay_s=2, max_delay_s=CAP_S, give_up_after_s=give_up_after_s)
    box = Outbox(db, {"pacs": destination}, policy)
    box.health.track(["pacs"], now())
    sets = [
        record_finished_job(db, _result_files(tmp_path / f"job{n}", generate_uid()), "pacs", series_number=n)
        for n in range(2)
    ]
    clock.t = now() + 0.01  # the recorded deliveries are due
    return box, destination, sets


def _states(box: Outbox) -> list[str]:
    return [r["state"] for r in box.db.query("SELECT state FROM deliveries ORDER BY id")]


def _run_outage(box: Outbox, clock: Clock, hours: float) -> list[float]:
    """Pass after pass until ``hours`` have gone by, jumping to each due probe. Returns the probe gaps."""
    end = clock.t + hours * 3600
    gaps = []
    while clock.t < end:
        box.deliver_due()
        health = box.health.get("pacs")
        assert not health.up and health.next_probe_at is not None
        gap = health.next_probe_at - clock.t
        gaps.append(gap)
        clock.t = max(health.next_probe_at, clock.t + 0.001)
    return gaps


def test_long_outage_probes_stay_capped_then_every_set_goes_at_once_in_order(tmp_path: Path, clock: Clock) -> None:
    box, destination, _sets = _outbox(tmp_path, clock)
    gaps = _run_outage(box, clock, hours=10)
    # One probe at a time on a capped backoff: never more than the cap apart, however long the outage.
    assert max(gaps) <= CAP_S
    assert destination.pings >= 10 * 3600 / CAP_S
    assert destination.sends == []  # nothing is sent to a destination that is down, only probed
    assert _states(box) == ["retry"] * 6  # waiting, not dead: 10 h of outage is below the 24 h age limit
    attempts = [r["attempts"] for r in box.db.query("SELECT attempts FROM deliveries")]
    assert max(attempts) <= 1, "a down destination costs probes, not attempts"

    destination.up = True
    clock.t = box.health.get("pacs").next_probe_at or clock.t
    box.deliver_due()
    assert box.health.get("pacs").up
    # Both jobs in the same pass, each as one send (one association), SEG first and SR last.
    assert destination.sends == [["SEG", "OT", "SR"], ["SEG", "OT", "SR"]]
    assert _states(box) == ["sent"] * 6


def test_dead_letter_goes_by_age_not_by_attempts(tmp_path: Path, clock: Clock) -> None:
    box, destination, _sets = _outbox(tmp_path, clock, give_up_after_s=3600)
    _run_outage(box, clock, hours=0.99)
    assert _states(box) == ["retry"] * 6
    _run_outage(box, clock, hours=0.05)
    assert _states(box) == ["dead"] * 6
    errors = {r["last_error"] for r in box.db.query("SELECT last_error FROM deliveries")}
    assert all(e.startswith("gave up after waiting 1.0 h") and "refused at once" in e for e in errors), errors

    # The operator's retry is tried at the next pass, not at the next scheduled probe.
    destination.up = True
    assert retry_delivery(box.db, 1)
    box.deliver_due()
    assert _states(box)[0] == "sent"


def test_an_object_refused_transiently_holds_the_rest_of_its_set(tmp_path: Path, clock: Clock) -> None:
    box, destination, _sets = _outbox(tmp_path, clock)
    destination.up = True
    destination.transient_once = {"OT"}
    box.deliver_due()
    first = box.db.query(
        """SELECT r.kind, d.state FROM deliveries d JOIN results r ON r.sop_instance_uid = d.result_sop_instance_uid
           WHERE d.job_id = 1"""
    )
    assert {r["kind"]: r["state"] for r in first} == {"SEG": "sent", "OT": "retry", "SR": "retry"}
    assert box.health.get("pacs").up, "one refused object does not make the destination down"
    clock.t += CAP_S + 1
    box.deliver_due()
    assert _states(box) == ["sent"] * 6
    # The second job went meanwhile; the first one's SC and SR followed together, the SR last.
    assert destination.sends == [["SEG", "OT", "SR"], ["SEG", "OT", "SR"], ["OT", "SR"]]


def test_index_of_schema_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    Database(path).close()
    conn = sqlite3.connect(path)
    # Back to what schema 1 had: no waiting_since, no destination_health.
    conn.execute("DROP TABLE destination_health")
    conn.execute("ALTER TABLE deliveries DROP COLUMN waiting_since")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()

    db = Database(path)
    assert db.query("SELECT value FROM meta WHERE key = 'schema_version'")[0]["value"] == str(SCHEMA_VERSION) == "2"
    columns = {r["name"] for r in db.query("PRAGMA table_info(deliveries)")}
    assert "waiting_since" in columns
    assert db.query("SELECT COUNT(*) AS n FROM destination_health")[0]["n"] == 0


def test_a_down_destination_with_nothing_waiting_is_still_probed(tmp_path: Path, clock: Clock) -> None:
    db = Database(tmp_path / "index.sqlite")
    destination = FakeDestination()
    box = Outbox(db, {"pacs": destination}, RetryPolicy(base_delay_s=2, max_delay_s=CAP_S))
    box.health.track(["pacs"], clock.t)
    box.health.mark_down("pacs", "refused", clock.t)
    destination.up = True
    clock.t += CAP_S
    box.deliver_due()
    assert destination.pings == 1
    assert box.health.get("pacs").up  # the up/down gauge does not wait for the next result to be true
