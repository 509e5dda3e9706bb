"""The worklist: one row per study, derived from the index (series, their current jobs, deliveries).

A study's *current* jobs are, per (series, pipeline), the newest job of the series' current
generation that was not superseded — so an operator re-run replaces the earlier result in the row.

Status, by precedence: receiving (a series still arriving) > running > queued > failed (a current
job failed or a delivery is dead) > done > not_routed (complete, but no rule chose a pipeline).
A study whose results wait for a destination that is down lists it in ``waiting_for`` (since when,
and the destination's last error): the page shows "waiting for PACS since HH:MM".
Nodule count and highest malignancy probability come from the ``findings`` of the current done
jobs of ``http.findings_pipelines``; a study none of those ran on has no count (shown as "—"),
which is not the same as zero nodules.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from node.config import HttpConfig
from node.index import queries
from node.index.db import Database
from node.index.health import Health, health_rows
from node.index.states import DeliveryState, JobState, SeriesState

STATUSES = ("receiving", "running", "queued", "failed", "done", "not_routed")


@dataclass(frozen=True)
class WorklistFilter:
    status: str | None = None
    flagged: bool | None = None
    study_uid: str | None = None


def _findings(summary_json: str | None) -> list[dict[str, Any]] | None:
    if not summary_json:
        return None
    try:
        summary = json.loads(summary_json)
    except ValueError:
        return None
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return None
    findings = summary.get("findings")
    return [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []


def _probability(finding: dict[str, Any]) -> float | None:
    value = finding.get("malignancy_probability")
    return float(value) if isinstance(value, int | float) else None


def build_worklist(db: Database, config: HttpConfig, flt: WorklistFilter | None = None) -> list[dict[str, Any]]:
    """Every study, newest first, filtered. Reads the whole index once (fine for the tens of
    thousands of studies a node holds; paging is applied after filtering by the caller)."""
    flt = flt or WorklistFilter()
    found = queries.worklist_rows(db, flt.study_uid)
    series_by_study: dict[str, list[Any]] = defaultdict(list)
    for s in found.series:
        series_by_study[s["study_uid"]].append(s)
    jobs_by_study: dict[str, list[Any]] = defaultdict(list)
    for j in found.current_jobs:
        jobs_by_study[j["study_uid"]].append(j)
    deliveries_by_study: dict[str, list[Any]] = defaultdict(list)
    for d in found.deliveries:
        deliveries_by_study[d["study_uid"]].append(d)
    down = {h.destination: h for h in health_rows(db) if not h.up}

    rows = []
    for study in found.studies:
        row = _study_row(
            study,
            series_by_study[study["study_uid"]],
            jobs_by_study[study["study_uid"]],
            deliveries_by_study[study["study_uid"]],
            config,
            down,
        )
        if flt.status and row["status"] != flt.status:
            continue
        if flt.flagged is not None and row["flagged"] != flt.flagged:
            continue
        rows.append(row)
    return rows


def _waiting_for(deliveries: list[Any], down: dict[str, Health]) -> list[dict[str, Any]]:
    """Destinations that are down and hold results of this study: since when they wait, and why."""
    out = []
    for name in sorted(
        {d["destination"] for d in deliveries if d["state"] in (DeliveryState.PENDING, DeliveryState.RETRY)} & set(down)
    ):
        starts = [d["waiting_since"] for d in deliveries if d["destination"] == name and d["waiting_since"]]
        out.append(
            {
                "destination": name,
                "since": min(starts) if starts else down[name].since,
                "destination_down_since": down[name].since,
                "reason": down[name].last_error or "",
            }
        )
    return out


def _study_row(
    study: Any,
    series: list[Any],
    jobs: list[Any],
    deliveries: list[Any],
    config: HttpConfig,
    down: dict[str, Health],
) -> dict[str, Any]:
    states = {j["state"] for j in jobs}
    dead = [d for d in deliveries if d["state"] == DeliveryState.DEAD]
    if any(s["state"] == SeriesState.RECEIVING for s in series):
        status = "receiving"
    elif JobState.RUNNING in states:
        status = "running"
    elif JobState.QUEUED in states:
        status = "queued"
    elif JobState.FAILED in states or dead:
        status = "failed"
    elif JobState.DONE in states:
        status = "done"
    else:
        status = "not_routed"

    nodule_count: int | None = None
    max_probability: float | None = None
    for job in jobs:
        if job["state"] != JobState.DONE or job["pipeline"] not in config.findings_pipelines:
            continue
        findings = _findings(job["result_summary"])
        if findings is None:
            continue
        nodule_count = (nodule_count or 0) + len(findings)
        for f in findings:
            p = _probability(f)
            if p is not None and (max_probability is None or p > max_probability):
                max_probability = p
    flagged = max_probability is not None and max_probability >= config.priority_threshold

    finished = [j["finished_at"] for j in jobs if j["state"] in (JobState.DONE, JobState.FAILED) and j["finished_at"]]
    last_received = max([s["last_received_at"] for s in series] or [study["last_received_at"]])
    result_at = max(finished) if finished and status in ("done", "failed") else None
    failures = [
        {
            "kind": "job",
            "job_id": j["id"],
            "pipeline": j["pipeline"],
            "series_uid": j["series_uid"],
            "reason": j["reason"] or "",
        }
        for j in jobs
        if j["state"] == JobState.FAILED
    ] + [
        {"kind": "delivery", "delivery_id": d["id"], "destination": d["destination"], "reason": d["last_error"] or ""}
        for d in dead
    ]
    row: dict[str, Any] = {
        "study_uid": study["study_uid"],
        "study_date": study["study_date"] or "",
        "study_description": study["study_description"] or "",
        "first_received_at": study["first_received_at"],
        "last_received_at": last_received,
        "status": status,
        "series_count": len(series),
        "instance_count": sum(s["instance_count"] for s in series),
        "modalities": sorted({s["modality"] for s in series if s["modality"]}),
        "pipelines": sorted({j["pipeline"] for j in jobs}),
        "jobs_by_state": {st: sum(1 for j in jobs if j["state"] == st) for st in sorted(states)},
        "nodule_count": nodule_count,
        "max_malignancy_probability": None if max_probability is None else round(max_probability, 4),
        "flagged": flagged,
        "result_at": result_at,
        "time_to_result_s": None if result_at is None else round(max(0.0, result_at - last_received), 1),
        "failures": failures,
        "deliveries_by_state": {
            st: sum(1 for d in deliveries if d["state"] == st) for st in sorted({d["state"] for d in deliveries})
        },
        # Results ready but held while their PACS is down (shown as "waiting for PACS since HH:MM").
        "waiting_for": _waiting_for(deliveries, down),
        "viewer_url": config.viewer_url_template.format(study_uid=study["study_uid"]),
    }
    if config.show_patient_identity:
        row["patient_name"] = study["patient_name"] or ""
        row["patient_id"] = study["patient_id"] or ""
    return row
