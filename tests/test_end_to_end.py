"""The product's main test: a real Orthanc auto-routes a CT study to the node (Lua), the node runs the
lung-nodule AI and stores SEG + SR + Grad-CAM SC back into Orthanc — also when Orthanc is down for a
while, when it refuses the node, and when the node is killed mid-way (results arrive exactly once)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from demo.node_process import REPO_ROOT, NodeProcess
from demo.paths import AUTOROUTE_LUA
from demo.paths import PHILIPS_CT as PHILIPS
from tests.peers.dcmtk import storescu
from tests.peers.net import wait_until
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.e2e, pytest.mark.needs("philips-ct", "dcmtk", "orthanc")]


RESULT_DEADLINE_S = 420


@pytest.fixture(autouse=True)
def _lung_nodule_pipeline_present() -> None:
    """Fail at once (not after the deadline) when the AI pipeline is missing from the tree."""
    import importlib.util

    assert importlib.util.find_spec("pipelines.lung_nodule.pipeline") is not None, "lung-nodule pipeline missing"


def _first(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)


@contextmanager
def _site(
    tmp_path: Path,
    *,
    orthanc_knows_node: bool = True,
    lua: bool = True,
    withdrawing: dict[str, OrthancPeer] | None = None,
) -> Iterator[tuple[NodeProcess, OrthancPeer]]:
    """``withdrawing``: more PACS for the route, {"reject": ..., "delete": ...}, whose destinations withdraw
    superseded results (an IOCM rejection note over C-STORE; deletion through Orthanc's REST API)."""
    # settle_s 3 (the default): a PACS that pauses longer than settle_s mid-send makes the node start on the
    # first part and supersede that run when the rest arrives (CI saw it once with 1 s).
    node = NodeProcess(tmp_path / "node", {"completeness": {"settle_s": 3, "quiet_period_s": 20},
                                           "delivery": {"check_interval_s": 0.25,
                                                        "retry": {"base_delay_s": 0.5, "max_delay_s": 2}}})  # fmt: skip
    modalities = {"node": (node.ae_title, "127.0.0.1", node.port)} if orthanc_knows_node else {}
    orthanc = OrthancPeer(
        tmp_path / "orthanc", modalities=modalities, lua_script=AUTOROUTE_LUA.read_text() if lua else None,
        stable_age_s=1,
    )  # fmt: skip
    node.config["destinations"] = {
        "pacs": {"type": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                 "calling_ae_title": node.ae_title, "timeout_s": 10}
    }  # fmt: skip
    withdrawing = withdrawing or {}
    if "reject" in withdrawing:
        node.config["destinations"]["pacs-reject"] = {
            "type": "dimse", "ae_title": withdrawing["reject"].aet, "host": "127.0.0.1",
            "port": withdrawing["reject"].dicom_port, "calling_ae_title": node.ae_title, "superseded": "reject"
        }  # fmt: skip
    if "delete" in withdrawing:
        node.config["destinations"]["orthanc-delete"] = {
            "type": "orthanc-rest", "url": withdrawing["delete"].url, "superseded": "delete"
        }  # fmt: skip
    node.config["routes"] = [
        {"name": "chest-ct", "when": {"tag": "Modality", "equals": "CT"}, "pipelines": ["lung-nodule"],
         "destinations": list(node.config["destinations"])}
    ]  # fmt: skip
    node.reconfigure({})
    with ExitStack() as peers:
        for peer in withdrawing.values():
            peers.enter_context(peer)
        with node, orthanc:
            yield node, orthanc


def _result_series(orthanc: OrthancPeer, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """Series of the study in Orthanc by modality, through its DICOMweb QIDO-RS."""
    by_modality: dict[str, list[dict[str, Any]]] = {}
    for series in orthanc.series_of_study(study_uid):
        modality = series["00080060"]["Value"][0]
        by_modality.setdefault(modality, []).append(series)
    return by_modality


def _instances(series: dict[str, Any]) -> int:
    return int(series["00201209"]["Value"][0])


def _deliveries(node: NodeProcess) -> list[dict[str, Any]]:
    return [dict(r) for r in node.db().query("SELECT * FROM deliveries ORDER BY id")]


def _all_sent(node: NodeProcess) -> bool:
    rows = _deliveries(node)
    return bool(rows) and all(r["state"] == "sent" for r in rows)


def test_orthanc_autoroutes_ct_and_receives_seg_sr_and_gradcam(tmp_path: Path) -> None:
    study_uid = str(_first(PHILIPS).StudyInstanceUID)
    with _site(tmp_path) as (node, orthanc):
        assert orthanc.upload_dir(PHILIPS) == 64  # Lua OnStableStudy forwards it to the node

        def results_in_orthanc() -> bool:
            found = _result_series(orthanc, study_uid)
            return {"SEG", "SR", "OT"} <= set(found) or ("SR" in found and _all_sent(node))

        wait_until(results_in_orthanc, RESULT_DEADLINE_S, "SEG, SR and SC in Orthanc", interval_s=1)
        wait_until(lambda: _all_sent(node), 60, "every delivery to be sent")
        found = _result_series(orthanc, study_uid)
        jobs = node.db().query("SELECT * FROM jobs ORDER BY id")
        # One run, or (when the PACS paused mid-send for longer than settle_s) early runs superseded while
        # running, which leave no results behind: everything below comes from the last, complete run.
        assert [j["state"] for j in jobs][-1] == "done"
        assert all(j["state"] == "superseded" for j in jobs[:-1])
        assert {r["job_id"] for r in node.db().query("SELECT job_id FROM results")} == {jobs[-1]["id"]}
        results = node.db().query("SELECT kind FROM results")
        kinds = sorted(r["kind"] for r in results)
        # Everything the node produced is in the PACS, once.
        assert sum(_instances(s) for m in ("SEG", "SR", "OT") for s in found.get(m, [])) == len(results)
        assert kinds.count("SR") == 1 and len(found["SR"]) == 1
        # The annotated adenocarcinoma of this series is a finding: so a SEG and Grad-CAM images exist.
        assert "SEG" in found and "OT" in found
        assert _instances(found["OT"][0]) == kinds.count("OT")
        # Orthanc knows the node's CT was sent once (the Lua marks it) and the node got every slice.
        assert node.db().query("SELECT instance_count FROM series")[0]["instance_count"] == 64


def test_results_wait_while_orthanc_is_down_and_arrive_when_it_is_back(tmp_path: Path) -> None:
    study_uid = str(_first(PHILIPS).StudyInstanceUID)
    with _site(tmp_path, lua=False) as (node, orthanc):
        orthanc.kill()  # down hard, during the whole run: the AI works while the PACS is away
        assert storescu(node.port, [PHILIPS], called=node.ae_title).returncode == 0

        def waiting_for_retry() -> bool:
            rows = _deliveries(node)
            return bool(rows) and all(d["state"] == "retry" and d["last_error"] for d in rows)

        wait_until(waiting_for_retry, RESULT_DEADLINE_S, "deliveries to wait for the PACS", interval_s=1)
        assert not any(d["state"] == "dead" for d in _deliveries(node))
        assert all("refused at once" in d["last_error"] for d in _deliveries(node))
        orthanc.start()
        # Probe cap 2 s here: one probe interval and the send (tests/test_outage.py has the timed outages).
        wait_until(lambda: _all_sent(node), 60, "deliveries after Orthanc came back", interval_s=0.5)
        found = _result_series(orthanc, study_uid)
        assert "SR" in found
        # Orthanc's own record: the set arrived SEG first, the Grad-CAM SCs next, the SR last, each once.
        kind_of = {r["sop_instance_uid"]: r["kind"] for r in node.db().query("SELECT * FROM results")}
        arrived = [kind_of[a["sop_instance_uid"]] for a in orthanc.new_instances() if a["sop_instance_uid"] in kind_of]
        assert len(arrived) == len(kind_of)
        assert arrived == sorted(arrived, key={"SEG": 0, "OT": 1, "SR": 2}.__getitem__), arrived
        assert arrived[-1] == "SR"


def test_destination_refusing_the_node_goes_to_dead_letter_at_once(tmp_path: Path) -> None:
    with _site(tmp_path, orthanc_knows_node=False, lua=False) as (node, _orthanc):
        assert storescu(node.port, [PHILIPS], called=node.ae_title).returncode == 0

        def settled() -> bool:
            rows = _deliveries(node)
            return bool(rows) and all(r["state"] in ("dead", "sent") for r in rows)

        wait_until(settled, RESULT_DEADLINE_S, "deliveries to settle", interval_s=1)
        rows = _deliveries(node)
        assert all(r["state"] == "dead" for r in rows)
        assert all(r["attempts"] == 1 for r in rows), "a permanent refusal must not be retried"
        # The reason names the calling AE the PACS refuses, so the operator knows what to configure.
        assert all("refuses to store from calling AE 'AINODE'" in r["last_error"] for r in rows), rows[0]["last_error"]
        listing = subprocess.run(
            [sys.executable, "-m", "node", "deliveries", "--config", str(node.config_path), "--state", "dead"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        )  # fmt: skip
        assert listing.returncode == 0 and "dead" in listing.stdout


def test_kill_9_during_processing_then_restart_delivers_exactly_once(tmp_path: Path) -> None:
    study_uid = str(_first(PHILIPS).StudyInstanceUID)
    with _site(tmp_path, lua=False) as (node, orthanc):
        assert storescu(node.port, [PHILIPS], called=node.ae_title).returncode == 0
        wait_until(lambda: bool(node.db().query("SELECT 1 FROM jobs WHERE state = 'running'")), 60, "the job to run")
        node.kill()
        node.start()
        wait_until(lambda: _all_sent(node), RESULT_DEADLINE_S, "deliveries after the restart", interval_s=1)
        job_events = node.db().query("SELECT detail FROM job_events WHERE to_state = 'queued'")
        assert any("node restarted" in e["detail"] for e in job_events)
        results = node.db().query("SELECT sop_instance_uid FROM results")
        found = _result_series(orthanc, study_uid)
        in_pacs = sum(_instances(s) for m in ("SEG", "SR", "OT") for s in found.get(m, []))
        assert in_pacs == len(results), "each result object is in the PACS exactly once"
        assert len(found["SR"]) == 1


def test_late_instance_reruns_and_sends_superseding_results(tmp_path: Path) -> None:
    """The re-run's results reach three PACS; each destination's `superseded` policy decides what becomes of
    the first run's: kept (pacs, the default), rejected by an IOCM note (pacs-reject), deleted (orthanc-delete)."""
    study_uid = str(_first(PHILIPS).StudyInstanceUID)
    node_known = {"node": ("AINODE", "127.0.0.1", 1)}
    rejecting = OrthancPeer(tmp_path / "orthanc-reject", modalities=node_known)
    deleting = OrthancPeer(tmp_path / "orthanc-delete")
    with _site(tmp_path, lua=False, withdrawing={"reject": rejecting, "delete": deleting}) as (node, orthanc):
        assert storescu(node.port, [PHILIPS], called=node.ae_title).returncode == 0
        wait_until(lambda: _all_sent(node), RESULT_DEADLINE_S, "the first results", interval_s=1)
        first_sr = node.db().query("SELECT sop_instance_uid FROM results WHERE kind = 'SR'")[0]["sop_instance_uid"]
        first_results = {r["sop_instance_uid"] for r in node.db().query("SELECT sop_instance_uid FROM results")}
        # One more slice, contiguous with the series (below its last slice), arrives late.
        files = sorted(PHILIPS.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
        lowest, second = (pydicom.dcmread(p) for p in files[:2])
        step = float(second.ImagePositionPatient[2]) - float(lowest.ImagePositionPatient[2])
        lowest.SOPInstanceUID = generate_uid()
        lowest.file_meta.MediaStorageSOPInstanceUID = lowest.SOPInstanceUID
        lowest.ImagePositionPatient[2] = float(lowest.ImagePositionPatient[2]) - step
        late = tmp_path / "late.dcm"
        lowest.save_as(late)
        assert storescu(node.port, [late], called=node.ae_title).returncode == 0

        def rerun_sent_and_withdrawn() -> bool:
            jobs = node.db().query("SELECT state, generation FROM jobs ORDER BY id")
            withdrawn = node.db().query("SELECT COUNT(*) AS n FROM withdrawals WHERE state IN ('noted', 'deleted')")
            return (
                len(jobs) == 2
                and jobs[1]["state"] == "done"
                and _all_sent(node)
                and withdrawn[0]["n"] == 2 * len(first_results)
            )

        wait_until(rerun_sent_and_withdrawn, RESULT_DEADLINE_S, "the re-run's results and withdrawals", interval_s=1)
        jobs = node.db().query("SELECT state, generation FROM jobs ORDER BY id")
        assert [(j["state"], j["generation"]) for j in jobs] == [("superseded", 1), ("done", 2)]
        found = _result_series(orthanc, study_uid)
        assert len(found["SR"]) == 2  # keep: the old report stays; the new one says what it replaces
        assert "KO" not in found
        new_sr_path = node.db().query(
            """SELECT r.path FROM results r JOIN jobs j ON j.id = r.job_id
               WHERE r.kind = 'SR' AND j.generation = 2"""
        )[0]["path"]
        new_sr = pydicom.dcmread(new_sr_path)
        predecessors = [
            ref.ReferencedSOPInstanceUID
            for study in new_sr.PredecessorDocumentsSequence
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ]
        assert first_sr in predecessors
        assert "supersedes" in new_sr.SeriesDescription.lower()
        rerun = node.db().query(
            "SELECT r.sop_instance_uid, r.kind FROM results r JOIN jobs j ON j.id = r.job_id WHERE j.generation = 2"
        )
        new_results = {r["sop_instance_uid"] for r in rerun if r["kind"] != "KO"}
        [note_uid] = [r["sop_instance_uid"] for r in rerun if r["kind"] == "KO"]
        # delete: only the re-run's SEG/SR/SC are left in that Orthanc.
        in_deleting = {i["MainDicomTags"]["SOPInstanceUID"] for i in deleting.get("/instances?expand")}
        assert in_deleting == new_results
        # reject: both runs and the note, which lists exactly the first run's objects.
        in_rejecting = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in rejecting.get("/instances?expand")}
        assert set(in_rejecting) == first_results | new_results | {note_uid}
        note = pydicom.dcmread(BytesIO(httpx.get(f"{rejecting.url}/instances/{in_rejecting[note_uid]}/file").content))
        evidence = {
            ref.ReferencedSOPInstanceUID
            for study in note.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        }
        assert evidence == first_results and note.ConceptNameCodeSequence[0].CodeValue == "113001"


def test_demo_command_runs_the_whole_loop(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    done = subprocess.run(
        [sys.executable, "-m", "node", "demo", "--study", str(PHILIPS), "--workdir", str(tmp_path / "demo"),
         "--json", str(report), "--timeout", str(RESULT_DEADLINE_S)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=RESULT_DEADLINE_S + 120,
    )  # fmt: skip
    import json

    # The outcome line comes first in the JSON report: show it (the printed findings can be long).
    data = json.loads(report.read_text()) if report.exists() else {}
    outcome = f"outcome {data.get('outcome')!r} ({data.get('reason')!r}); "
    assert done.returncode == 0, outcome + done.stdout[:1500] + "\n...\n" + done.stdout[-1500:] + done.stderr[-3000:]
    assert data["outcome"] == "results in PACS"
    assert data["results_in_pacs"].get("SR") == 1
    assert data["findings"], "the Philips series' mass is found"
    assert "NOT FOR DIAGNOSTIC USE" in done.stdout
    shutil.rmtree(tmp_path / "demo", ignore_errors=True)
