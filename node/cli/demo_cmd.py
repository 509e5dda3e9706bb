"""`ainode demo`: a local PACS (Orthanc) and the node, one real CT through both."""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    # The demo site is its own package (demo/, beside node/): imported here only, never by `serve`.
    try:
        from demo.site import print_report, run_demo
    except ImportError as exc:
        print(f"ainode demo runs from a source checkout (pip install -e .): {exc}")
        return 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ainode-demo-"))
    report = run_demo(args.study, workdir, timeout_s=args.timeout, keep_running=args.keep_running)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
        print(f"report written to {args.json}")
    return 0 if report.outcome == "results in PACS" else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a local PACS and the node, send a CT through, show the results")
    p.add_argument("--study", type=Path, help="folder of DICOM files (default: ../shared/data philips-chest-64)")
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("--workdir", type=Path, help="where the node and Orthanc keep their data (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for results (default 900)")
    p.add_argument("--keep-running", action="store_true", help="leave node and PACS running after the results")
    p.set_defaults(func=_demo)
