"""`ainode echo` and `ainode send`: the node's DICOM SCU, for checks and demos.

Both go through the same DIMSE destination code the exporter uses to deliver results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: `ainode status` need not load pynetdicom
    from node.export.dimse import DimseDestination


def _destination(args: argparse.Namespace) -> DimseDestination:
    from node.config.destinations import DimseDestinationConfig
    from node.export.dimse import DimseDestination

    config = DimseDestinationConfig(
        type="dimse", ae_title=args.aet, host=args.host, port=args.port, calling_ae_title=args.calling_aet
    )
    return DimseDestination(f"{args.aet}@{args.host}:{args.port}", config)


def _echo(args: argparse.Namespace) -> int:
    from node.errors import DeliveryError

    try:
        _destination(args).ping()
    except DeliveryError as exc:
        print(f"C-ECHO failed: {exc}", file=sys.stderr)
        return 1
    print(f"C-ECHO to {args.aet}@{args.host}:{args.port}: success")
    return 0


def _send(args: argparse.Namespace) -> int:
    from node.errors import DeliveryError

    files = sorted(p for p in args.dir.rglob("*") if p.is_file()) if args.dir.is_dir() else [args.dir]
    if not files:
        print(f"ainode: no files in {args.dir}", file=sys.stderr)
        return 1
    try:
        report = _destination(args).send(files)
    except DeliveryError as exc:
        print(f"C-STORE failed: {exc}", file=sys.stderr)
        return 1
    print(f"sent {len(report.delivered)}/{len(files)} file(s) to {args.aet}@{args.host}:{args.port}")
    for outcome in report.failed[:20]:
        print(f"  {outcome.path.name}: {outcome.detail}", file=sys.stderr)
    return 0 if report.ok else 1


def _add_peer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("aet", help="called AE title")
    p.add_argument("--calling-aet", default="AINODE", help="our AE title (default AINODE)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    _add_peer_arguments(e)
    e.set_defaults(func=_echo)
    s = sub.add_parser("send", help="C-STORE a file or a folder of DICOM files to a peer")
    s.add_argument("dir", type=Path, help="file or folder (searched recursively)")
    _add_peer_arguments(s)
    s.set_defaults(func=_send)
