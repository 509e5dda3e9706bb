"""Restart of the PACS -> last result stored in it, after outages of 1, 5 and 10 minutes.

    python -m benchmarks.outage_recovery [--minutes 1 5 10] [--sets 3] [--probe-cap-s 10] [--json F]

A real Orthanc is killed (SIGKILL) under a running node that has result sets to deliver (recorded in
its index as the worker does, demo/outage.py), kept down for the outage, then started again on the same
ports and storage. Reported per outage, from Orthanc's own record (/changes, whole seconds) and from the
node's index (sent_at, same machine clock): restart -> first and last result stored, the probes the node
made, and the ratio of the recovery to the probe cap (the design bound: one probe interval + the send).
For comparison, the per-object schedule the node had before (each delivery its own exponential backoff with
full jitter, base 5 s, cap 900 s, 12 attempts) is simulated for the same outage and object count: restart ->
last result (median and 95th percentile over 10,000 draws) and how often an object would be dead by then.
Not a test: prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.outage import OutageSite
from node.export.backoff import RetryPolicy
from tests.result_objects import make_results  # small SEG/SC/SR objects on the shared Siemens CT


def simulate_per_object_backoff(outage_s: float, objects: int, draws: int = 10_000) -> dict[str, float]:
    """The pre-issue-16 outbox: each object retried on its own schedule from the outage's start."""
    rng = random.Random(16)
    last_delays = []
    dead = 0
    for _ in range(draws):
        worst = 0.0
        for _ in range(objects):
            t, attempt = 0.0, 1  # first attempt at the outage's start, refused
            while t < outage_s and attempt < 12:
                t += rng.uniform(0.0, min(900.0, 5.0 * 2.0 ** (attempt - 1)))
                attempt += 1
            if t < outage_s:  # the 12th attempt still fell in the outage: dead letter
                dead += 1
                continue
            worst = max(worst, t - outage_s)
        last_delays.append(worst)
    last_delays.sort()
    return {
        "old_restart_to_last_result_s_median": round(last_delays[len(last_delays) // 2], 1),
        "old_restart_to_last_result_s_p95": round(last_delays[int(len(last_delays) * 0.95)], 1),
        "old_dead_objects_per_outage": round(dead / draws, 3),
    }


def run_outage(workdir: Path, minutes: float, sets: int, probe_cap_s: float) -> dict[str, Any]:
    with OutageSite(workdir, probe_cap_s=probe_cap_s) as site:
        killed_at = site.kill_pacs()
        for n in range(sets):
            site.record_result_set(make_results(workdir / f"results-{n}"))
        while time.time() - killed_at < minutes * 60:
            time.sleep(1)
        waited_ok = site.waiting()
        restarted_at = site.restart_pacs()
        site.wait_all_sent(10 * probe_cap_s + 120)
        arrivals = site.arrivals()
        sent = [float(r["sent_at"]) for r in site.deliveries()]
        back = [json.loads(line) for line in site.node.log_text().splitlines() if '"destination_back_up"' in line]
        probes = sum(1 for line in site.node.log_text().splitlines() if '"destination_still_down"' in line)
        return {
            "outage_s": round(restarted_at - killed_at, 1),
            "all_waiting_before_restart": waited_ok,
            "objects": len(sent),
            "restart_to_first_result_s_orthanc": min(a.at for a in arrivals) - int(restarted_at),
            "restart_to_last_result_s_orthanc": max(a.at for a in arrivals) - int(restarted_at),
            "restart_to_first_result_s_node": round(min(sent) - restarted_at, 2),
            "restart_to_last_result_s_node": round(max(sent) - restarted_at, 2),
            "probes": probes + 1,  # the failed ones, and the one that found the PACS back
            "node_saw_down_for_s": back[-1]["down_for_s"] if back else None,
            "probe_cap_s": probe_cap_s,
            "recovery_over_probe_cap": round((max(sent) - restarted_at) / probe_cap_s, 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    parser.add_argument("--sets", type=int, default=3, help="result sets (jobs) waiting, 3 objects each")
    parser.add_argument(
        "--probe-cap-s", type=float, default=RetryPolicy().max_delay_s, help="delivery.retry.max_delay_s"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
            figures = run_outage(Path(tmp), minutes, args.sets, args.probe_cap_s)
        figures["outage_min"] = minutes
        figures.update(simulate_per_object_backoff(figures["outage_s"], figures["objects"]))
        figures["old_over_new_median"] = round(
            figures["old_restart_to_last_result_s_median"] / max(figures["restart_to_last_result_s_node"], 0.01), 1
        )
        results.append(figures)
        print(
            f"outage {minutes:g} min ({figures['outage_s']} s, {figures['objects']} objects, probe cap "
            f"{args.probe_cap_s:g} s): restart -> last result {figures['restart_to_last_result_s_node']} s "
            f"(node) / {figures['restart_to_last_result_s_orthanc']:.0f} s (Orthanc, whole s); first "
            f"{figures['restart_to_first_result_s_node']} s; {figures['recovery_over_probe_cap']}x the cap; "
            f"per-object backoff before (simulated): median {figures['old_restart_to_last_result_s_median']} s, "
            f"p95 {figures['old_restart_to_last_result_s_p95']} s ({figures['old_over_new_median']}x)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(re.sub(r"\s+", " ", json.dumps(results)))


if __name__ == "__main__":
    main()
