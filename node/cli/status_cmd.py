"""`ainode status`: what the node holds and is doing, read from the index (works while it runs)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from node.cli.serve_cmd import add_config_arguments, open_index
from node.index import queries, withdrawals
from node.index.db import Database


def collect_status(db: Database) -> dict[str, Any]:
    return {
        "studies": queries.study_count(db),
        "series": queries.series_overview(db),
        "jobs_by_state": queries.counts_by_state(db, "jobs"),
        "deliveries_by_state": queries.counts_by_state(db, "deliveries"),
        "recent_jobs": queries.recent_jobs(db, 50),
        # Superseded results withdrawn from destinations (node/export/superseded.py): "reject noted", "delete dead"...
        "withdrawals_by_state": withdrawals.withdrawal_counts(db),
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
