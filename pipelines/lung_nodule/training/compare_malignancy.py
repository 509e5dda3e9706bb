"""The malignancy backbone comparison table, and the real-series check of a classifier bundle.

    # one train_malignancy run per backbone, same budget/seed/data (the patch cache is shared), then:
    python -m pipelines.lung_nodule.training.compare_malignancy --reports artifacts/malignancy \\
        --out artifacts/malignancy/comparison --real-check artifacts/malignancy/resnet10.pt

The table reads the ``<name>.json`` reports train_malignancy wrote. ``--real-check`` runs the whole pipeline of
each given bundle on the real series of ../shared/data: the COVID-19 chest (opacities, no nodule), where a
malignancy should only ever be shown for a candidate the detector keeps, and LIDC-IDRI-0002 (one ground-glass
nodule rated malignant 4-5 by its readers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.lung_nodule.training.shared_data import SHARED_CT

COLUMNS = (
    ("backbone", "backbone"),
    ("heldout_auc", "AUC"),
    ("heldout_recall", "recall @ thr"),
    ("heldout_specificity", "specificity @ thr"),
    ("heldout_ece", "ECE (Platt)"),
    ("heldout_ece_uncalibrated", "ECE (raw)"),
    ("params", "params"),
    ("ms_per_patch", "CPU ms/patch"),
    ("ms_per_patch_with_gradcam", "ms/patch + Grad-CAM"),
    ("train_seconds", "train s"),
    ("bundle_mb", "bundle MB"),
)


def table(reports: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in reports:
        row = {**r, "bundle_mb": round(r["bundle_bytes"] / 1e6, 2)}
        lines.append("| " + " | ".join(str(row.get(k, "")) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def real_check(bundle: Path, threads: int) -> dict[str, Any]:
    from pipelines.loading import load_series_dir
    from pipelines.lung_nodule.pipeline import LungNodulePipeline

    pipeline = LungNodulePipeline(weights=bundle, threads=threads)
    out: dict[str, Any] = {"bundle": str(bundle), "backbone": pipeline.bundle.classifier_backbone}
    for name in ("ricord-chest-255", "lidc-idri-0002"):
        volume = load_series_dir(SHARED_CT / name)
        result = pipeline.run(volume)
        everything = pipeline.candidates(volume)  # before the operating point: what the detector rejects too
        rejected = [f for f in everything if f.detection_score < pipeline.detection_threshold]
        out[name] = {
            "reported": [
                {
                    "centre_mm": [round(v) for v in f.centre_mm],
                    "long_axis_mm": round(f.long_axis_mm, 1),
                    "detection_score": round(f.detection_score, 3),
                    "malignancy": round(f.malignancy_probability, 3),
                    "category": f.category.value if f.category else None,
                }
                for f in result.findings
            ],
            "rejected_candidates": len(rejected),
            "rejected_malignancy_max": round(max((f.malignancy_probability for f in rejected), default=0.0), 3),
            "timings_s": {k: round(v, 2) for k, v in result.timings_s.items()},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=Path, default=Path("artifacts/malignancy"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/malignancy/comparison"))
    parser.add_argument("--real-check", type=Path, nargs="*", default=[], help="bundles to run on the real series")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    reports = []
    for path in sorted(args.reports.glob("*.json")):
        data = json.loads(path.read_text())
        if "heldout_auc" in data:
            reports.append({**data, "backbone": path.stem})
    reports.sort(key=lambda r: -r["heldout_auc"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in reports}
    md = table(reports) + "\n\nBudget" + ("" if len(budgets) == 1 else "s (differ!)") + ": " + "; ".join(budgets)
    checks = [real_check(b, args.threads) for b in args.real_check]
    args.out.with_suffix(".md").write_text(md + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"reports": reports, "real_check": checks}, indent=2) + "\n")
    print(md)
    print(json.dumps(checks, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
