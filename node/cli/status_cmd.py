"""`ainode status`: what the node holds and is doing, read from the index (works while it runs)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from node.cli.serve_cmd import add_config_arguments, open_index


def collect_status(db: Any) -> dict[str, Any]:
    series = [
        dict(r)
        for r in db.query(
            """SELECT series_uid, study_uid, modality, series_description, state, generation, instance_count,
                      completion_reason, calling_ae FROM series ORDER BY first_received_at DESC"""
        )
    ]
    jobs_by_state = {r["state"]: r["n"] for r in db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
    deliveries_by_state = {
        r["state"]: r["n"] for r in db.query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
    }
    # Superseded results withdrawn from destinations (node/export/superseded.py): "reject noted", "delete dead"...
    withdrawals_by_state = {
        f"{r['method']} {r['state']}": r["n"]
        for r in db.query("SELECT method, state, COUNT(*) AS n FROM withdrawals GROUP BY method, state")
    }
    studies = db.query("SELECT COUNT(*) AS n FROM studies")[0]["n"]
    jobs = [
        dict(r)
        for r in db.query(
            "SELECT id, series_uid, pipeline, state, attempts, reason FROM jobs ORDER BY id DESC LIMIT 50"
        )
    ]
    return {
        "studies": studies,
        "series": series,
        "jobs_by_state": jobs_by_state,
        "deliveries_by_state": deliveries_by_state,
        "withdrawals_by_state": withdrawals_by_state,
        "recent_jobs": jobs,
    }


def _status(args: argparse.Namespace) -> int:
    db = open_index(args)
    status = collect_status(db)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"studies: {status['studies']}   series: {len(status['series'])}")
    for s in status["series"]:
        print(
            f"  {s['series_uid']}  {s['modality'] or '?':3} {s['instance_count']:4} inst  {s['state']:9} "
            f"gen {s['generation']}  {s['completion_reason'] or ''}"
        )
    print("jobs:       " + (", ".join(f"{k} {v}" for k, v in sorted(status["jobs_by_state"].items())) or "none"))
    print("deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(status["deliveries_by_state"].items())) or "none"))
    if status["withdrawals_by_state"]:
        print("withdrawn:  " + ", ".join(f"{k} {v}" for k, v in sorted(status["withdrawals_by_state"].items())))
    for j in status["recent_jobs"][:10]:
        print(f"  job {j['id']}: {j['pipeline']} {j['state']}" + (f" ({j['reason']})" if j["reason"] else ""))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="studies, series with completeness state, jobs and deliveries by state")
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)
