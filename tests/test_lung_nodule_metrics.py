"""Evaluation maths and measurement helpers, on hand-made inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.base import NoduleCategory
from pipelines.lung_nodule.measure import axes_mm
from pipelines.lung_nodule.pipeline import categorise
from pipelines.lung_nodule.training import metrics

pytestmark = pytest.mark.ai


def test_froc_counts_hits_false_positives_and_ignores_duplicates() -> None:
    truths = [metrics.Truth(0, (0.0, 0.0, 0.0), 5.0), metrics.Truth(1, (10.0, 0.0, 0.0), 5.0)]
    candidates = [
        metrics.Candidate(0, 0.9, (1.0, 0.0, 0.0)),  # hit nodule 0
        metrics.Candidate(0, 0.8, (0.0, 1.0, 0.0)),  # duplicate of nodule 0: ignored
        metrics.Candidate(1, 0.7, (50.0, 0.0, 0.0)),  # false positive
        metrics.Candidate(1, 0.6, (11.0, 0.0, 0.0)),  # hit nodule 1 after one FP in 2 scans
    ]
    at, cpm, _, _ = metrics.froc(candidates, truths, n_scans=2)
    assert at[0.125] == 0.5 and at[0.25] == 0.5
    assert at[0.5] == 1.0 and at[8.0] == 1.0
    assert cpm == pytest.approx((0.5 * 2 + 1.0 * 5) / 7)


def test_auc_and_confusion() -> None:
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert metrics.roc_auc([1, 0], [0.5, 0.5]) == 0.5
    c = metrics.confusion([1, 1, 0, 0], [True, False, True, False])
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (1, 1, 1, 1)
    assert c["recall"] == 0.5 and c["f1"] == 0.5


def test_recall_first_threshold_reaches_the_target() -> None:
    labels = [1, 1, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.3, 0.2, 0.5, 0.1]
    t = metrics.recall_first_threshold(labels, scores, 0.75)
    assert t == 0.3


def test_dice() -> None:
    a = np.zeros((4, 4), dtype=bool)
    a[:2] = True
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, ~a) == 0.0


def test_axes_of_a_disk_and_an_ellipse() -> None:
    yy, xx = np.mgrid[-30:31, -30:31]
    disk = yy**2 + xx**2 <= 20**2
    long_axis, short_axis = axes_mm(disk, 0.5, 0.5)
    assert long_axis == pytest.approx(20.5, abs=0.6) and short_axis == pytest.approx(20.5, abs=0.6)
    ellipse = (yy / 10) ** 2 + (xx / 25) ** 2 <= 1
    long_axis, short_axis = axes_mm(ellipse, 1.0, 1.0)
    assert long_axis == pytest.approx(51, abs=1.5) and short_axis == pytest.approx(21, abs=1.5)


def test_category_rules_from_hu() -> None:
    assert categorise(np.full(100, 40.0, dtype=np.float32)) is NoduleCategory.SOLID
    assert categorise(np.full(100, -600.0, dtype=np.float32)) is NoduleCategory.GROUND_GLASS
    mixed = np.r_[np.full(60, -600.0), np.full(40, 30.0)].astype(np.float32)
    assert categorise(mixed) is NoduleCategory.PART_SOLID
    calcified = np.r_[np.full(80, 40.0), np.full(20, 600.0)].astype(np.float32)
    assert categorise(calcified) is NoduleCategory.CALCIFIED
