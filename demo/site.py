"""`ainode demo`: a whole site on one machine, one real CT through it, and what happened.

A local Orthanc (the Debian binary) plays the hospital PACS, configured as a site would be: it
auto-routes stable CT studies to the node with Lua. The node runs on its embedded defaults
(SQLite, local spool, CPU). The demo uploads a real chest CT to Orthanc, waits until the node's
SEG, SR and Grad-CAM images are stored back in Orthanc, and prints the timings and findings.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from demo.local_pacs import LocalOrthanc, orthanc_available
from demo.netutil import free_port
from demo.paths import AUTOROUTE_LUA, PHILIPS_CT
from node.api.secret_hash import hash_password
from node.config import NodeConfig
from node.index import queries
from node.index.states import DeliveryState, JobState
from node.service import NodeService

# The Philips chest: its annotated adenocarcinoma is a finding, so the demo shows a nodule outlined and measured
# (the Siemens series has no finding with 0.3.0: the SR then says so, and there is no SEG to look at).
DEFAULT_STUDY = PHILIPS_CT
NODE_AET = "AINODE"
PACS_AET = "ORTHANC"
RESULT_MODALITIES = {"SEG", "SR", "OT"}


@dataclass
class DemoReport:
    study_dir: str
    study_instance_uid: str = ""
    instances_uploaded: int = 0
    outcome: str = "running"
    reason: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    results_in_pacs: dict[str, int] = field(default_factory=dict)
    where_to_look: dict[str, str] = field(default_factory=dict)
    # Runs replaced because the series grew after it looked complete (late instances).
    superseded_runs: int = 0
    disclaimer: str = "NOT FOR DIAGNOSTIC USE"


def demo_config(workdir: Path, orthanc: LocalOrthanc, node_port: int, http_port: int, password: str) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "http": {
                "enabled": True,
                "port": http_port,
                "auth": {
                    "mode": "basic",
                    "credentials": [{"name": "demo", "secret_hash": hash_password(password), "role": "operator"}],
                },
                # No OHIF in the demo: the worklist links to the study's series in the PACS's DICOMweb.
                "viewer_url_template": orthanc.dicomweb_url + "/studies/{study_uid}/series",
            },
            "dicom": {
                "ae_title": NODE_AET,
                "port": node_port,
                "bind_address": "127.0.0.1",
                "allowed_callers": [{"ae_title": PACS_AET, "host": "127.0.0.1"}],
            },
            "storage": {"data_dir": str(workdir / "node-data"), "min_free_disk_mb": 256},
            "completeness": {"quiet_period_s": 30, "settle_s": 2, "check_interval_s": 0.5},
            "workers": {"processes": 1},
            "delivery": {"check_interval_s": 0.5, "retry": {"base_delay_s": 1, "max_delay_s": 5}},
            "logging": {"level": "WARNING", "format": "console"},
            "destinations": {
                "pacs": {"type": "dimse", "ae_title": PACS_AET, "host": "127.0.0.1", "port": orthanc.dicom_port,
                         "calling_ae_title": NODE_AET},
            },
            "routes": [
                {
                    "name": "chest-ct",
                    "when": {"all": [{"tag": "Modality", "equals": "CT"},
                                     {"not": {"tag": "ImageType", "one_of": ["LOCALIZER"]}}]},
                    "pipelines": ["lung-nodule"],
                    "destinations": ["pacs"],
                }
            ],
        }
    )  # fmt: skip


def _say(message: str) -> None:
    print(message, flush=True)


def _study_uid(folder: Path) -> str:
    import pydicom

    for path in sorted(folder.rglob("*")):
        if path.is_file():
            return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    raise FileNotFoundError(f"no DICOM files in {folder}")


def _results_in_pacs(orthanc: LocalOrthanc, study_uid: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for series in orthanc.series_of_study(study_uid):
        modality = series.get("00080060", {}).get("Value", [""])[0]
        number = int(series.get("00201209", {}).get("Value", [0])[0])
        counts[modality] = counts.get(modality, 0) + number
    return counts


def run_demo(
    study_dir: Path | None, workdir: Path, *, timeout_s: float = 900, keep_running: bool = False
) -> DemoReport:
    study_dir = study_dir or DEFAULT_STUDY
    report = DemoReport(study_dir=str(study_dir))
    if not orthanc_available():
        report.outcome, report.reason = "error", "Orthanc is not installed: run `bash scripts/install-peers.sh`"
        return report
    if not AUTOROUTE_LUA.exists():
        report.outcome, report.reason = "error", f"{AUTOROUTE_LUA} is missing: the demo runs from a source checkout"
        return report
    if not study_dir.exists():
        from demo.ct_factory import write_demo_ct

        _say(f"{study_dir} not found: generating a synthetic chest CT with one nodule instead")
        study_dir = write_demo_ct(workdir / "generated-ct")
        report.study_dir = str(study_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    node_port = free_port()
    orthanc = LocalOrthanc(
        workdir / "orthanc",
        aet=PACS_AET,
        modalities={"node": (NODE_AET, "127.0.0.1", node_port)},
        lua_script=AUTOROUTE_LUA.read_text(),
        stable_age_s=2,
    )
    http_port = free_port()
    password = secrets.token_urlsafe(12)
    config = demo_config(workdir, orthanc, node_port, http_port, password)
    from node.logging_setup import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    service = NodeService(config)
    t0 = time.monotonic()
    try:
        service.start()
        orthanc.start()
        _say(f"node: AE {NODE_AET} on 127.0.0.1:{node_port}, data in {config.storage.data_dir}")
        _say(f"PACS: Orthanc AE {PACS_AET}, REST/DICOMweb {orthanc.url}, DIMSE 127.0.0.1:{orthanc.dicom_port}")
        study_uid = _study_uid(study_dir)
        report.study_instance_uid = study_uid
        _say(f"uploading {study_dir} to the PACS ...")
        report.instances_uploaded = orthanc.upload_dir(study_dir)
        report.timings_s["upload_to_pacs"] = time.monotonic() - t0
        _say(f"  {report.instances_uploaded} instances; Orthanc routes the study to the node once it is stable")
        _wait_for_results(service, orthanc, study_uid, report, t0, timeout_s)
        _fill_from_index(service, report)
        report.where_to_look = {
            "worklist": f"http://127.0.0.1:{http_port}/worklist (user demo, password {password})",
            "metrics": f"http://127.0.0.1:{http_port}/metrics",
            "pacs_study": f"{orthanc.url}/app/explorer.html#study?uuid={orthanc.lookup_id(study_uid)}",
            "dicomweb": f"{orthanc.dicomweb_url}/studies/{study_uid}/series",
            "node_status": f"ainode status --data-dir {config.storage.data_dir}",
        }
        if keep_running:
            _say("running; Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        orthanc.stop()
    return report


def judge_progress(jobs: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The demo's verdict from the study's jobs and deliveries: (outcome, reason), or None to keep waiting.

    Only current work counts. A series that re-opens (an instance arrived after the geometry said
    "complete", e.g. the PACS paused mid-send on a busy machine) supersedes its earlier job; that
    job's state stays 'superseded' for good and must not keep the demo waiting.
    """
    current = [j for j in jobs if j["state"] != JobState.SUPERSEDED]
    current_ids = {j["id"] for j in current}
    current_deliveries = [d for d in deliveries if d["job_id"] in current_ids]
    failed = [j for j in current if j["state"] == JobState.FAILED]
    if failed:
        return "failed", str(failed[0]["reason"])
    dead = [d for d in current_deliveries if d["state"] == DeliveryState.DEAD]
    if dead:
        return "failed", str(dead[0]["last_error"])
    if not current or any(j["state"] != JobState.DONE for j in current):
        return None
    if not current_deliveries:
        return "no results to send", str(current[0]["reason"] or "the pipeline produced no DICOM objects")
    if all(d["state"] == DeliveryState.SENT for d in current_deliveries):
        return "sent", ""
    return None


def _wait_for_results(
    service: NodeService, orthanc: LocalOrthanc, study_uid: str, report: DemoReport, t0: float, timeout_s: float
) -> None:
    deadline = t0 + timeout_s
    last_line = ""
    while time.monotonic() < deadline:
        jobs = queries.jobs_of_study(service.db, study_uid)
        deliveries = queries.deliveries_of_study(service.db, study_uid)
        line = f"  jobs: {_count_states(jobs) or 'none yet'}; deliveries: {_count_states(deliveries) or 'none yet'}"
        if line != last_line:
            _say(f"[{time.monotonic() - t0:6.1f} s]{line}")
            last_line = line
        verdict = judge_progress([dict(j) for j in jobs], [dict(d) for d in deliveries])
        if verdict is not None and verdict[0] != "sent":
            report.outcome, report.reason = verdict
            return
        if verdict is not None:
            with contextlib.suppress(httpx.HTTPError):  # Orthanc busy indexing: ask again next round
                report.results_in_pacs = {
                    k: v for k, v in _results_in_pacs(orthanc, study_uid).items() if k in RESULT_MODALITIES
                }
            if report.results_in_pacs:
                report.outcome = "results in PACS"
                report.timings_s["total"] = time.monotonic() - t0
                return
        time.sleep(0.5)
    report.outcome, report.reason = "timeout", f"no results in the PACS after {timeout_s:.0f} s"


def _count_states(rows: list[Any]) -> str:
    states = [r["state"] for r in rows]
    return ", ".join(f"{s} {states.count(s)}" for s in sorted(set(states)))


def _fill_from_index(service: NodeService, report: DemoReport) -> None:
    report.superseded_runs = queries.superseded_job_count(service.db, report.study_instance_uid)
    r = queries.latest_done_job_timeline(service.db, report.study_instance_uid)
    if r is None:
        return
    summary = json.loads(r["result_summary"] or "{}")
    report.findings = summary.get("findings", [])
    node_timings = summary.get("node_timings_s", {})
    timings = {
        "node_receiving": r["last_received_at"] - r["first_received_at"],
        "completeness_wait_after_last_instance": (r["completed_at"] or 0) - r["last_received_at"],
        "queue_wait": (r["started_at"] or 0) - (r["completed_at"] or 0),
        "job_total": (r["finished_at"] or 0) - (r["started_at"] or 0),
        **{f"job_{k}": v for k, v in node_timings.items()},
    }
    if r["sent_at"]:
        timings["export_after_job"] = r["sent_at"] - r["finished_at"]
        timings["last_instance_to_results_sent"] = r["sent_at"] - r["last_received_at"]
    report.timings_s.update({k: round(v, 2) for k, v in timings.items()})


def print_report(report: DemoReport) -> None:
    _say("")
    _say(f"outcome: {report.outcome}" + (f" ({report.reason})" if report.reason else ""))
    if report.results_in_pacs:
        _say("results stored in the PACS: " + ", ".join(f"{k} x{v}" for k, v in sorted(report.results_in_pacs.items())))
    if report.superseded_runs:
        _say(
            f"the series grew after it looked complete: {report.superseded_runs} earlier run(s) superseded, "
            "results are from the complete series"
        )
    _say(f"nodules found: {len(report.findings)}")
    for f in report.findings:
        _say(
            f"  #{f['number']}: {f['long_axis_mm']:.1f} mm, {f['volume_mm3']:.0f} mm3, "
            f"malignancy probability {f['malignancy_probability']:.2f}, at {f['centre_mm']} (patient mm)"
        )
    if report.timings_s:
        _say("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report.timings_s.items()))
    for what, where in report.where_to_look.items():
        _say(f"{what}: {where}")
    _say(report.disclaimer)
