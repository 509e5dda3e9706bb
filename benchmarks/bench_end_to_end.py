"""Time from the last instance acknowledged by the node to all results stored in the PACS.

    python -m benchmarks.bench_end_to_end [--slices 300]

Runs `ainode demo`'s site (a local Orthanc auto-routing to the node, CPU, embedded defaults) on a
300-slice 512x512 chest CT built from the real Siemens series, and reports the breakdown taken
from the node's index: completeness wait after the last instance, queue wait, series load,
inference, encoding, export. Not a test: prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from demo.ct_factory import make_thin_slice_series
from demo.site import print_report, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        study = Path(tmp) / "ct"
        make_thin_slice_series(study, args.slices)
        report = run_demo(study, Path(tmp) / "site", timeout_s=1200)
        print_report(report)
        t = report.timings_s
        if "last_instance_to_results_sent" in t:
            total = t["last_instance_to_results_sent"]
            print(f"\nlast instance acknowledged -> all results stored in the PACS: {total:.2f} s")
            parts = ["completeness_wait_after_last_instance", "queue_wait", "job_model_load", "job_load",
                     "job_inference", "job_encode", "export_after_job"]  # fmt: skip
            print("breakdown: " + ", ".join(f"{p.removeprefix('job_')} {t[p]:.2f} s" for p in parts if p in t))
        if args.json:
            args.json.write_text(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
