"""`ainode route-test DIR`: which route each series of a folder would take, and why. Runs nothing."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/ainode/node.yaml")


@dataclass
class SeriesHeaders:
    series_instance_uid: str
    first: Any  # pydicom Dataset of the lowest InstanceNumber
    instances: int


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "route-test",
        help="show which route each series in a folder would take, and why (runs nothing)",
        description="Read the DICOM headers in DIR, group them by series and evaluate the routing rules "
        "of the config on each series. Nothing is stored, run or sent.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="folder of DICOM files (searched recursively)")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("AINODE_CONFIG", DEFAULT_CONFIG)),
        help="the node's YAML configuration (read as `ainode serve` reads it); default $AINODE_CONFIG or %(default)s",
    )
    parser.add_argument("--calling-ae", default="", help="calling AE title the series would arrive from")
    parser.add_argument("--called-ae", default="AINODE", help="called AE title (the node's); default %(default)s")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _dicom_headers(folder: Path) -> Iterator[Any]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            yield pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            continue  # not DICOM (a README, a DICOMDIR's siblings...): route-test ignores it


def group_by_series(folder: Path) -> list[SeriesHeaders]:
    series: dict[str, SeriesHeaders] = {}
    for ds in _dicom_headers(folder):
        uid = str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        entry = series.get(uid)
        if entry is None:
            series[uid] = SeriesHeaders(uid, ds, 1)
            continue
        entry.instances += 1
        if _instance_number(ds) < _instance_number(entry.first):
            entry.first = ds
    return list(series.values())


def _instance_number(ds: Any) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _quiet_logs() -> None:
    """route-test prints its report on stdout; the router's own info logs would only clutter it."""
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def run(args: argparse.Namespace) -> int:
    from node.config import load_config, unrouted_result_warnings
    from node.dicom_attributes import routing_attributes
    from node.errors import ConfigError
    from node.route.evaluation import evaluate_routes
    from node.route.explanation import explain_decision

    _quiet_logs()

    if not args.config.is_file():
        print(f"route-test: config {args.config} not found (use --config FILE)", file=sys.stderr)
        return 2
    try:
        # The loader `ainode serve` uses: a config the node would refuse is refused here, with the same reason.
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"route-test: {exc}", file=sys.stderr)
        return 2
    if not args.directory.is_dir():
        print(f"route-test: {args.directory} is not a directory", file=sys.stderr)
        return 2
    if "routes" not in config.model_fields_set:
        print("route-test: no `routes:` in the config: the node's default route applies", file=sys.stderr)
    for warning in unrouted_result_warnings(config.routes):
        print(f"route-test: WARNING {warning}", file=sys.stderr)
    groups = group_by_series(args.directory)
    if not groups:
        print(f"route-test: no DICOM files under {args.directory}", file=sys.stderr)
        return 1

    records: list[dict[str, Any]] = []
    for group in groups:
        # The attributes the running node routes on, taken from the file as the store takes them.
        attributes = routing_attributes(group.first)
        decision = evaluate_routes(
            config.routes, attributes, args.calling_ae, args.called_ae, series_uid=group.series_instance_uid
        )
        ds = group.first
        records.append(
            {
                "series_instance_uid": group.series_instance_uid,
                "modality": str(ds.get("Modality", "")),
                "series_description": str(ds.get("SeriesDescription", "")),
                "instances": group.instances,
                "routes": [r.name for r in decision.matched],
                "fallback": decision.used_fallback,
                "jobs": {p: list(d) for p, d in decision.jobs().items()},
                "attributes": attributes,
                "explanation": explain_decision(decision),
            }
        )
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        print(
            f"series {record['series_instance_uid']}  {record['modality']}  "
            f"{record['instances']} instance(s)  {record['series_description']!r}"
        )
        for line in record["explanation"].splitlines():
            print(f"  {line}")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m node.cli.route_cmd route-test DIR``), same as ``ainode route-test``."""
    parser = argparse.ArgumentParser(prog="ainode")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
