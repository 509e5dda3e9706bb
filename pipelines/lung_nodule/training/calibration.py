"""Fitting the malignancy calibration (Platt / temperature) and measuring it (ECE, reliability diagram)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipelines.lung_nodule.calibration import Calibration

ECE_BINS = 10


def fit_calibration(logits: npt.ArrayLike, labels: npt.ArrayLike, method: str = "platt") -> Calibration:
    """Minimise the binary cross-entropy of sigmoid(a * logit + b) on (logits, labels); b = 0 for "temperature"."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if method not in ("platt", "temperature"):
        raise ValueError(f"unknown calibration method {method!r}")
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)  # a = exp(log_a) > 0
    b = torch.zeros((), dtype=torch.float64, requires_grad=(method == "platt"))
    params = [log_a, b] if method == "platt" else [log_a]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.exp(log_a) * z + b, y)
        loss.backward()  # type: ignore[no-untyped-call]  # torch stub
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]  # torch stub
    return Calibration(method, float(torch.exp(log_a).detach()), float(b.detach()))


def reliability(
    probs: npt.ArrayLike, labels: npt.ArrayLike, bins: int = ECE_BINS
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per equal-width bin of predicted probability: mean prediction, observed frequency, count (NaN if empty)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=p, minlength=bins) / counts
        freq = np.bincount(which, weights=y, minlength=bins) / counts
    return conf, freq, counts.astype(np.int64)


def expected_calibration_error(probs: npt.ArrayLike, labels: npt.ArrayLike, bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (share of samples) x |observed frequency - mean prediction|."""
    conf, freq, counts = reliability(probs, labels, bins)
    ok = counts > 0
    return float(np.sum(counts[ok] / counts.sum() * np.abs(freq[ok] - conf[ok])))


def plot_reliability(curves: dict[str, tuple[npt.ArrayLike, npt.ArrayLike]], out: Path, title: str) -> None:
    """Reliability diagram: one line per name -> (probabilities, labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    for name, (p, y) in curves.items():
        conf, freq, counts = reliability(p, y)
        ok = counts > 0
        ax.plot(conf[ok], freq[ok], "o-", label=f"{name} (ECE {expected_calibration_error(p, y):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted malignancy probability")
    ax.set_ylabel("observed share malignant (reader median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
