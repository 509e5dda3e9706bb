"""PNG crops of the shipped model's known failure modes on the real series of ../shared/data (model card).

    python -m pipelines.lung_nodule.training.failure_crops --out artifacts/failure-modes

For each case: the axial slice through the lesion or finding, lung window, with the readers' 50 % consensus
outline (green, LIDC) and the model's outline (red: reported; orange: a candidate below the operating point).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipelines.base import CTVolume, Finding
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.pipeline import LungNodulePipeline
from pipelines.lung_nodule.training.readers import cluster_marks, read_lidc_marks
from pipelines.lung_nodule.training.shared_data import SHARED_CT


def _crop(
    volume: CTVolume, finding: Finding, truth: npt.NDArray[np.bool_] | None, title: str, out: Path, reported: bool
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = finding.full_mask(volume.shape)
    k = int(np.argwhere(mask).mean(axis=0).round()[0]) if truth is None else int(np.argwhere(truth).mean(0)[0])
    centre = np.argwhere(mask | (truth if truth is not None else mask)).mean(axis=0).round().astype(int)
    half = 60
    ys = slice(max(0, centre[1] - half), centre[1] + half)
    xs = slice(max(0, centre[2] - half), centre[2] + half)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(volume.hu[k, ys, xs], cmap="gray", vmin=-1200, vmax=300)
    if truth is not None and truth[k, ys, xs].any():
        ax.contour(truth[k, ys, xs], [0.5], colors="lime", linewidths=1)
    if mask[k, ys, xs].any():
        ax.contour(mask[k, ys, xs], [0.5], colors="red" if reported else "orange", linewidths=1)
    ax.set_title(textwrap.fill(title, 52), fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/failure-modes"))
    parser.add_argument("--shared-ct", type=Path, default=SHARED_CT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = LungNodulePipeline(threads=args.threads)
    threshold = pipeline.detection_threshold

    lidc = load_series_dir(args.shared_ct / "lidc-idri-0002")
    (nodule,) = [
        c
        for c in cluster_marks(read_lidc_marks(args.shared_ct / "lidc-idri-0002" / "071.xml", lidc))
        if c.nodule_readers >= 2
    ]
    truth = nodule.consensus_mask(lidc.shape, 0.5)
    candidates = pipeline.candidates(lidc)
    on = [c for c in candidates if np.linalg.norm(np.subtract(c.centre_mm, nodule.centre_mm)) <= nodule.diameter_mm / 2]
    if on:
        c = on[0]
        _crop(
            lidc,
            c,
            truth,
            f"LIDC-IDRI-0002: {nodule.diameter_mm:.0f} mm ground glass (2 readers), "
            f"model outlines {c.long_axis_mm:.0f} mm, score {c.detection_score:.3f} < {threshold:.3f}",
            args.out / "lidc-0002-ground-glass-under-outlined.png",
            c.detection_score >= threshold,
        )
    others = [c for c in candidates if c not in on]
    if others:
        c = max(others, key=lambda f: f.detection_score)
        _crop(
            lidc,
            c,
            None,
            f"LIDC-IDRI-0002: best false candidate, {c.long_axis_mm:.0f} mm, score "
            f"{c.detection_score:.3f}, malignancy {c.malignancy_probability:.2f}",
            args.out / "lidc-0002-best-false-candidate.png",
            c.detection_score >= threshold,
        )
    covid = load_series_dir(args.shared_ct / "ricord-chest-255")
    for i, f in enumerate(pipeline.run(covid).findings, start=1):
        _crop(
            covid,
            f,
            None,
            f"COVID chest (no annotated nodule): reported {f.long_axis_mm:.0f} mm "
            f"{f.category.value if f.category else ''}, score {f.detection_score:.2f}, malignancy "
            f"{f.malignancy_probability:.2f}",
            args.out / f"covid-reported-{i}.png",
            True,
        )
    for path in sorted(args.out.glob("*.png")):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
