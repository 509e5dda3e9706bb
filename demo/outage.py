"""A PACS outage on demand: a real Orthanc killed and restarted under a running node.

Shared by tests/test_outage.py and benchmarks/outage_recovery.py. The node runs as a process
(``python -m node serve``) with a DIMSE destination to the Orthanc; result sets are recorded in its
index the way the worker records a finished job (result rows + pending deliveries, one transaction), so
that what runs during the outage is the export stage itself and not the AI, whose minutes would
only blur the recovery times. The end-to-end test with the real pipeline is in tests/test_end_to_end.py.

Times of arrival are Orthanc's own (``/changes``, second resolution, UTC), not the node's log.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pydicom
from pydicom.uid import CTImageStorage

from demo.local_pacs import LocalOrthanc
from demo.netutil import wait_until
from demo.node_process import NodeProcess
from node.index import deliveries, jobs, queries, results, series
from node.index.db import Database, now
from node.index.series import InstanceRecord, SeriesRecord, StudyRecord

DESTINATION = "pacs"


@dataclass(frozen=True)
class ResultSet:
    job_id: int
    kind_of: dict[str, str]  # SOP Instance UID -> kind (SEG, OT, SR)


@dataclass(frozen=True)
class Arrival:
    seq: int
    at: float  # epoch seconds (Orthanc's clock, whole seconds)
    sop_instance_uid: str


@dataclass
class OutageSite:
    workdir: Path
    probe_cap_s: float = 2.0
    destination_type: str = "dimse"  # or "stow-rs", "orthanc-rest"
    sets: list[ResultSet] = field(default_factory=list)

    def __post_init__(self) -> None:
        delivery = {"check_interval_s": 0.25, "retry": {"base_delay_s": 0.5, "max_delay_s": self.probe_cap_s}}
        self.node = NodeProcess(self.workdir / "node", {"delivery": delivery}, http={})
        node_modality = (self.node.ae_title, "127.0.0.1", self.node.port)
        self.pacs = LocalOrthanc(self.workdir / "orthanc", modalities={"node": node_modality})
        destination: dict[str, Any] = {
            "dimse": {"type": "dimse", "ae_title": self.pacs.aet, "host": "127.0.0.1", "port": self.pacs.dicom_port,
                      "calling_ae_title": self.node.ae_title, "timeout_s": 10},
            "stow-rs": {"type": "stow-rs", "url": self.pacs.dicomweb_url, "timeout_s": 10},
            "orthanc-rest": {"type": "orthanc-rest", "url": self.pacs.url, "timeout_s": 10},
        }[self.destination_type]  # fmt: skip
        self.node.config["destinations"] = {DESTINATION: destination}
        self.node.reconfigure({})

    def __enter__(self) -> OutageSite:
        self.pacs.start()
        try:
            self.node.start()
        except BaseException:
            self.pacs.stop()  # __exit__ does not run when __enter__ fails: no Orthanc left behind
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.node.stop()
        self.pacs.stop()

    # --- the outage ------------------------------------------------------------------------------
    def kill_pacs(self) -> float:
        self.pacs.kill()
        return time.time()

    def restart_pacs(self) -> float:
        """Start Orthanc again on the same ports and storage; the moment it answers (epoch seconds)."""
        self.pacs.start()
        return time.time()

    # --- results, as the worker records them ---------------------------------------------------------
    def record_result_set(self, files: list[Path]) -> ResultSet:
        """A finished job of a study (its SEG, SC and SR files) with pending deliveries to the PACS."""
        db = self.node.db()
        try:
            result_set = record_finished_job(db, files, DESTINATION, series_number=len(self.sets) + 1)
        finally:
            db.close()
        self.sets.append(result_set)
        return result_set

    # --- what the node and the PACS say --------------------------------------------------------------
    def deliveries(self) -> list[dict[str, Any]]:
        db = self.node.db()
        try:
            return queries.all_deliveries(db)
        finally:
            db.close()

    def all_sent(self) -> bool:
        rows = self.deliveries()
        return bool(rows) and all(r["state"] == "sent" for r in rows)

    def waiting(self) -> bool:
        """Every delivery waits for the PACS (retry, with the reason), none was sent or given up."""
        rows = self.deliveries()
        return bool(rows) and all(r["state"] == "retry" and r["last_error"] for r in rows)

    def wait_all_sent(self, timeout_s: float) -> None:
        wait_until(self.all_sent, timeout_s, "every delivery to be sent", interval_s=0.2)

    def arrivals(self) -> list[Arrival]:
        """The results in Orthanc, in the order it recorded them."""
        ours = {uid for s in self.sets for uid in s.kind_of}
        return [
            Arrival(a["seq"], _orthanc_date(a["date"]), a["sop_instance_uid"])
            for a in self.pacs.new_instances()
            if a["sop_instance_uid"] in ours
        ]

    def metric(self, name: str, destination: str = DESTINATION) -> float | None:
        import httpx

        text = httpx.get(f"{self.node.http_url}/metrics", timeout=10).text
        prefix = f'{name}{{destination="{destination}"}} '
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return None


def _orthanc_date(value: str) -> float:
    """Orthanc's change dates ("20261202T143001") are UTC."""
    return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%S")))


def record_finished_job(db: Database, files: list[Path], destination: str, *, series_number: int = 1) -> ResultSet:
    """A finished job in the index, as the worker records one: study, series, the job, its result objects
    and one pending delivery per object to ``destination``, in one transaction."""
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid = str(first.StudyInstanceUID)
    series_uid = f"{study_uid}.{series_number}"  # the (fictitious) CT series the job ran on
    kind_of = {
        str(ds.SOPInstanceUID): str(ds.Modality) for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)
    }
    t = now()
    study = StudyRecord(study_uid, "", "", "", "", "")
    ct_series = SeriesRecord(series_uid, "CT", "", "", series_number, {}, "OUTAGE", "AINODE")
    # One stand-in CT instance (never read) so that the series exists as the store would have made it.
    ct_slice = InstanceRecord(
        f"{series_uid}.1", str(CTImageStorage), "", files[0], 0, "", 1, None, None, None, None, None, "OUTAGE", t
    )
    with db.transaction() as conn:
        series.index_instance(conn, study, ct_series, ct_slice)
        series.mark_series_complete(conn, series_uid, t, "outage harness")
        generation = jobs.series_generation(conn, series_uid)
        job_id = jobs.queue_job(
            conn,
            series_uid=series_uid,
            study_uid=study_uid,
            generation=generation,
            pipeline="lung-nodule",
            route="outage",
            destinations=[destination],
        )
        jobs.mark_job_done(conn, job_id, t, json.dumps({"status": "completed"}), None)
        for path, (uid, kind) in zip(files, kind_of.items(), strict=True):
            results.record_result(conn, uid, job_id, kind, path, t)
            deliveries.queue_delivery(conn, job_id, uid, destination, t)
    return ResultSet(job_id, kind_of)
