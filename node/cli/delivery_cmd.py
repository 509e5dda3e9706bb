"""`ainode deliveries` and `ainode retry ID`: the outbox, for operators (works while the node runs)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from node.cli.serve_cmd import add_config_arguments, open_index
from node.index import queries
from node.index.states import DeliveryState


def _deliveries(args: argparse.Namespace) -> int:
    db = open_index(args)
    rows = queries.deliveries_with_kind(db, args.state, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from node.index.health import health_rows

    for health in health_rows(db):
        if not health.up:
            print(
                f"{health.destination}: down since {_clock(health.since)}, {health.failed_probes} failed probe(s), "
                f"next probe at {_clock(health.next_probe_at or health.since, seconds=True)}: {health.last_error}"
            )
    if not rows:
        print("no deliveries")
    for r in rows:
        error = f"  {r['last_error']}" if r["last_error"] else ""
        waiting = f" waiting since {_clock(r['waiting_since'])}" if r["waiting_since"] and r["state"] == "retry" else ""
        print(
            f"{r['id']:6}  job {r['job_id']:<5} {r['kind']:4} -> {r['destination']:12} {r['state']:8} "
            f"attempts {r['attempts']}{waiting}{error}"
        )
    return 0


def _clock(at: float, *, seconds: bool = False) -> str:
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.localtime(at))


def _retry(args: argparse.Namespace) -> int:
    from node.export.outbox import retry_delivery

    db = open_index(args)
    failed = [i for i in args.ids if not retry_delivery(db, i)]
    for i in args.ids:
        if i not in failed:
            print(f"delivery {i}: queued again")
    for i in failed:
        print(f"ainode: delivery {i} does not exist or is not dead/retrying", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("deliveries", help="list result deliveries (outbox) with their state and last error")
    add_config_arguments(d)
    d.add_argument("--state", choices=[s.value for s in DeliveryState])
    d.add_argument("--limit", type=int, default=100)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_deliveries)
    r = sub.add_parser("retry", help="send dead or waiting deliveries again now")
    add_config_arguments(r)
    r.add_argument("ids", type=int, nargs="+", metavar="ID")
    r.set_defaults(func=_retry)
