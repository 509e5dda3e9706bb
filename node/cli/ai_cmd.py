"""`ainode analyze | train | evaluate`: the lung-nodule AI offline, same code path as the node's worker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    analyze = subparsers.add_parser(
        "analyze", help="run lung-nodule AI on a folder of DICOM files (offline), findings as JSON"
    )
    analyze.add_argument("series_dir", type=Path)
    analyze.add_argument("--json", type=Path, help="write the findings here (default: stdout)")
    analyze.add_argument("--series-uid", help="which series, when the folder holds several")
    analyze.add_argument("--pipeline", default="lung-nodule")
    analyze.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    analyze.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present, else CPU"
    )
    analyze.add_argument("--dicom-out", type=Path, help="also write the SEG, SR and Grad-CAM SC files here")
    analyze.set_defaults(func=_analyze)

    train = subparsers.add_parser("train", help="train the lung-nodule models (composite data)")
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="passed to pipelines.lung_nodule.training.train")
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser("evaluate", help="FROC/CPM, Dice, AUC, confusion on held-out + real data")
    evaluate.add_argument(
        "evaluate_args", nargs=argparse.REMAINDER, help="passed to pipelines.lung_nodule.training.evaluate"
    )
    evaluate.set_defaults(func=_evaluate)


def _analyze(args: argparse.Namespace) -> int:
    from node.encode import write_results
    from node.work.runner import run_series
    from pipelines import registry
    from pipelines.base import RuntimeOptions
    from pipelines.devices import DeviceUnavailable

    if not args.series_dir.is_dir():
        print(f"analyze: {args.series_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        pipeline = registry.load_pipeline(args.pipeline, RuntimeOptions(device=args.device, threads=args.threads or 0))
    except DeviceUnavailable as exc:
        print(f"analyze: --device: {exc}", file=sys.stderr)
        return 2
    run = run_series(
        pipeline,
        sorted(p for p in args.series_dir.rglob("*") if p.is_file()),
        series_uid=args.series_uid,
        encode=args.dicom_out is not None,
        uid_seed=lambda volume: f"analyze/{volume.info.series_instance_uid}",
    )
    result = run.result
    if "load" in run.timings_s:
        result.timings_s["load"] = run.timings_s["load"]
    for path in write_results(run.datasets, args.dicom_out) if run.datasets else []:
        print(f"wrote {path}", file=sys.stderr)
    text = json.dumps(result.summary(), indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipelines.lung_nodule.training import train

    return train.main(_passthrough(args.train_args))


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines.lung_nodule.training import evaluate

    return evaluate.main(_passthrough(args.evaluate_args))


def _passthrough(rest: list[str]) -> list[str]:
    """Options after ``--`` go to the module's own parser: ``ainode evaluate -- --scans 6``."""
    return rest[1:] if rest[:1] == ["--"] else list(rest)
