"""Restart of the PACS -> last result stored in it, after outages of 1, 5 and 10 minutes.

    python -m benchmarks.outage_recovery [--minutes 1 5 10] [--sets 3] [--probe-cap-s 10] [--json F]

A real Orthanc is killed (SIGKILL) under a running node that has result sets to deliver (recorded in
its index as the worker does, demo/outage.py), kept down for the outage, then started again on the same
ports and storage. Reported per outage, from Orthanc's own record (/changes, whole seconds) and from the
node's index (sent_at, same machine clock): restart -> first and last result stored, the probes the node
made, and the ratio of the recovery to the probe cap (the design bound: one probe interval + the send).
Not a test: prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.outage import OutageSite
from node.export.backoff import RetryPolicy
from tests.result_objects import make_results  # small SEG/SC/SR objects on the shared Siemens CT


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
        results.append(figures)
        print(
            f"outage {minutes:g} min ({figures['outage_s']} s, {figures['objects']} objects, probe cap "
            f"{args.probe_cap_s:g} s): restart -> last result {figures['restart_to_last_result_s_node']} s "
            f"(node) / {figures['restart_to_last_result_s_orthanc']:.0f} s (Orthanc, whole s); first "
            f"{figures['restart_to_first_result_s_node']} s; {figures['recovery_over_probe_cap']}x the cap",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(re.sub(r"\s+", " ", json.dumps(results)))


if __name__ == "__main__":
    main()
