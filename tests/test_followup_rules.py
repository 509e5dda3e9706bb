"""Follow-up rules as pure functions: Brock (PanCan) risk against worked examples from the published
coefficients, Lung-RADS v2022 categories at the table's boundaries, nodule matching, growth and doubling time,
and the coarse lung mask on the real 5 mm chest CT."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from demo.paths import SHARED_CT
from pipelines.base import NoduleCategory
from pipelines.followup import brock, lungrads, lungs, tracking
from pipelines.followup.brock import BrockInputs, brock_risk
from pipelines.followup.lungrads import Category, NoduleInput, Temporal
from pipelines.followup.tracking import NoduleMeasurement, Status

SOLID = NoduleCategory.SOLID
PART_SOLID = NoduleCategory.PART_SOLID
GGN = NoduleCategory.GROUND_GLASS

# --- Brock: worked examples, each term written out from McWilliams et al. NEJM 2013, full model 2b (Table 3).


def test_brock_reference_patient_10mm_solid() -> None:
    # 62-year-old man (age term 0), 10 mm solid nodule in a lower lobe, 4 nodules (count term 0), no family
    # history, emphysema or spiculation. Size term: -5.3854 * (1.0 ** -0.5 - 1.58113883) = +3.129665;
    # log odds = 3.129665 - 6.7892 = -3.659535; risk = 1 / (1 + e^3.659535) = 1 / 39.843 = 2.510 %.
    r = brock_risk(BrockInputs(10.0, SOLID, 4, 62, female=False, emphysema=False, upper_lobe=False,
                               family_history=False, spiculation=False))  # fmt: skip
    assert r.unknown == ()
    assert r.risk == pytest.approx(0.025098, abs=2e-6)
    assert r.low == r.high == r.risk


def test_brock_every_risk_factor_present() -> None:
    # 70-year-old woman, 15 mm part-solid spiculated upper-lobe nodule, the only one, emphysema and a family
    # history. Terms: age 0.0287 * 8 = 0.2296; female 0.6011; family 0.2961; emphysema 0.2953;
    # size -5.3854 * (1.5 ** -0.5 - 1.58113883) = -5.3854 * (0.8164966 - 1.58113883) = +4.117904;
    # part-solid 0.3770; upper lobe 0.6581; count -0.0824 * (1 - 4) = +0.2472; spiculation 0.7729;
    # constant -6.7892. Sum 0.806004; risk 1 / (1 + e^-0.806004) = 69.13 %.
    r = brock_risk(BrockInputs(15.0, PART_SOLID, 1, 70, female=True, emphysema=True, upper_lobe=True,
                               family_history=True, spiculation=True))  # fmt: skip
    assert r.risk == pytest.approx(0.69126, abs=5e-5)


def test_brock_small_ground_glass_nodule_among_many() -> None:
    # 55-year-old man, 5 mm non-solid nodule, 6 nodules: age -0.2009; size -5.3854 * (0.5 ** -0.5 - 1.58113883)
    # = -5.3854 * (1.4142136 - 1.58113883) = +0.898946; non-solid -0.1276; count -0.1648; constant -6.7892.
    # Sum -6.383541; risk 0.1686 %.
    r = brock_risk(BrockInputs(5.0, GGN, 6, 55, female=False, emphysema=False, upper_lobe=False,
                               family_history=False, spiculation=False))  # fmt: skip
    assert r.risk == pytest.approx(0.0016863, abs=2e-7)


def test_brock_unknown_inputs_are_stated_and_widen_the_range() -> None:
    r = brock_risk(BrockInputs(10.0, SOLID, 4, 62, female=False, emphysema=False, upper_lobe=None))
    assert set(r.unknown) == {"family_history", "spiculation", "upper_lobe"}
    assert r.risk == pytest.approx(0.025098, abs=2e-6)  # point estimate at "absent"
    assert r.low == pytest.approx(r.risk)
    # High end: all three present: log odds -3.659535 + 0.2961 + 0.6581 + 0.7729 = -1.932435.
    assert r.high == pytest.approx(1 / (1 + math.exp(1.932435)), abs=1e-6)
    text = r.describe()
    assert "family_history" in text and "spiculation" in text and "upper_lobe" in text and "assumes" in text


def test_brock_without_age_gives_no_risk_and_says_why() -> None:
    r = brock_risk(BrockInputs(10.0, SOLID, 1, None, female=True, emphysema=False, upper_lobe=True))
    assert r.risk is None and "age" in r.unknown
    assert "not computed" in r.describe() and "age" in r.describe()


def test_brock_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match="diameter"):
        brock.log_odds(diameter_mm=0, nodule_type=SOLID, nodule_count=1, age_years=60, female=False,
                       family_history=False, emphysema=False, upper_lobe=False, spiculation=False)  # fmt: skip


# --- Lung-RADS v2022


@pytest.mark.parametrize(
    ("diameter", "nodule_type", "temporal", "expected"),
    [
        (5.9, SOLID, Temporal.BASELINE, Category.BENIGN),
        (6.0, SOLID, Temporal.BASELINE, Category.PROBABLY_BENIGN),
        (8.0, SOLID, Temporal.BASELINE, Category.SUSPICIOUS_4A),
        (14.9, SOLID, Temporal.BASELINE, Category.SUSPICIOUS_4A),
        (15.0, SOLID, Temporal.BASELINE, Category.SUSPICIOUS_4B),
        (3.9, SOLID, Temporal.NEW, Category.BENIGN),
        (4.0, SOLID, Temporal.NEW, Category.PROBABLY_BENIGN),
        (6.0, SOLID, Temporal.NEW, Category.SUSPICIOUS_4A),
        (8.0, SOLID, Temporal.NEW, Category.SUSPICIOUS_4B),
        (7.9, SOLID, Temporal.GROWING, Category.SUSPICIOUS_4A),
        (8.0, SOLID, Temporal.GROWING, Category.SUSPICIOUS_4B),
        (9.0, SOLID, Temporal.STABLE, Category.BENIGN),
        (5.0, PART_SOLID, Temporal.BASELINE, Category.BENIGN),
        (5.0, PART_SOLID, Temporal.NEW, Category.PROBABLY_BENIGN),
        (29.9, GGN, Temporal.BASELINE, Category.BENIGN),
        (30.0, GGN, Temporal.BASELINE, Category.PROBABLY_BENIGN),
        (30.0, GGN, Temporal.STABLE, Category.BENIGN),
        (20.0, NoduleCategory.CALCIFIED, Temporal.NEW, Category.NEGATIVE),
    ],
)
def test_lungrads_nodule_rows(diameter: float, nodule_type: NoduleCategory, temporal: Temporal,
                              expected: Category) -> None:  # fmt: skip
    category, rule = lungrads.nodule_category(NoduleInput(diameter, nodule_type, temporal))
    assert category is expected, rule


def test_lungrads_exam_takes_its_worst_nodule_and_names_the_rule() -> None:
    exam = lungrads.assess([
        NoduleInput(4.0, SOLID, Temporal.STABLE, "nodule 1"),
        NoduleInput(6.5, SOLID, Temporal.GROWING, "nodule 2"),
        NoduleInput(3.0, SOLID, Temporal.NEW, "nodule 3"),
    ])  # fmt: skip
    assert exam.category is Category.SUSPICIOUS_4A
    assert exam.rule.startswith("nodule 2: solid 6.5 mm growing")
    assert "suggestion" in exam.describe() and "v2022" in exam.describe()
    assert lungrads.assess([]).category is Category.NEGATIVE
    assert lungrads.assess([], prior_unavailable=True).category is Category.INCOMPLETE


def test_lungrads_unknown_type_uses_solid_rows_and_says_so() -> None:
    category, rule = lungrads.nodule_category(NoduleInput(9.0, None, Temporal.BASELINE))
    assert category is Category.SUSPICIOUS_4A and "unknown" in rule


def test_mean_diameter_rounds_to_a_tenth() -> None:
    assert lungrads.mean_diameter(7.0, 5.96) == 6.5


# --- Tracking and growth


def _m(centre: tuple[float, float, float], diameter: float, uid: str = "") -> NoduleMeasurement:
    volume = math.pi / 6 * diameter**3
    return NoduleMeasurement(centre, diameter, diameter, volume, tracking_uid=uid, category=SOLID)


def test_doubling_time_of_a_volume_that_doubled_in_a_year() -> None:
    assert tracking.doubling_time_days(100.0, 200.0, 365.0) == pytest.approx(365.0)
    assert tracking.doubling_time_days(100.0, 400.0, 365.0) == pytest.approx(182.5)
    assert tracking.doubling_time_days(200.0, 100.0, 365.0) == pytest.approx(-365.0)  # a halving time
    assert tracking.doubling_time_days(100.0, 100.0, 365.0) is None
    with pytest.raises(ValueError, match="older"):
        tracking.doubling_time_days(100.0, 200.0, 0.0)


def test_track_after_a_shift_gives_each_status() -> None:
    shift = (12.0, -8.0, 25.0)  # the patient lay 12 mm left, 8 mm anterior, 25 mm higher on the table

    def moved(c: tuple[float, float, float]) -> tuple[float, float, float]:
        return (c[0] + shift[0], c[1] + shift[1], c[2] + shift[2])

    prior = [_m((-80, 10, -100), 6.0, "uid-a"), _m((70, 20, -60), 8.0, "uid-b"), _m((60, -30, -150), 5.0, "uid-c"),
             _m((-50, 0, -200), 7.0, "uid-d")]  # fmt: skip
    current = [
        _m(moved((-79, 11, -101)), 8.0),  # a: grown (volume x 2.37)
        _m(moved((70.5, 19, -60)), 8.1),  # b: stable
        _m(moved((60, -30, -151)), 4.0),  # c: shrunk (volume x 0.51)
        _m(moved((0, 40, -120)), 5.0),  # new
    ]  # d resolved
    tracked = tracking.track(prior, current, interval_days=365.0, shift_mm=shift)
    assert [t.status for t in tracked] == [Status.GROWN, Status.STABLE, Status.SHRUNK, Status.NEW, Status.RESOLVED]
    assert [t.prior.tracking_uid if t.prior else None for t in tracked] == ["uid-a", "uid-b", "uid-c", None, "uid-d"]
    grown = tracked[0].growth
    assert grown is not None
    assert grown.volume_change_fraction == pytest.approx((8 / 6) ** 3 - 1)
    assert grown.diameter_change_mm == pytest.approx(2.0)
    assert grown.doubling_time_days == pytest.approx(365 * math.log(2) / (3 * math.log(8 / 6)))
    assert tracking.fastest_doubling_time_days(tracked) == pytest.approx(grown.doubling_time_days)
    # Without the shift the same nodules are 30 mm apart: nothing matches.
    unaligned = tracking.track(prior, current, interval_days=365.0)
    assert all(t.status in (Status.NEW, Status.RESOLVED) for t in unaligned)


# --- The coarse lung mask on real CT


def test_lung_centroid_follows_a_shift_of_the_real_chest() -> None:
    from pipelines.loading import load_series

    folder = SHARED_CT / "philips-chest-64" / "dicom"
    volume = load_series(sorted(folder.iterdir()), series_instance_uid=None)
    centre = lungs.lung_centroid_mm(volume)
    assert centre is not None
    # The same chest moved by whole voxels (rows and slices) inside the same geometry: the centroid moves with it.
    shifted_hu = np.full_like(volume.hu, -1000.0)
    shifted_hu[2:, 10:, :] = volume.hu[:-2, :-10, :]
    moved = lungs.lung_centroid_mm(replace(volume, hu=shifted_hu))
    assert moved is not None
    to_mm = volume.geometry.voxel_to_patient
    expected = np.asarray(to_mm([2, 10, 0])) - np.asarray(to_mm([0, 0, 0]))
    assert np.allclose(np.asarray(moved) - np.asarray(centre), expected, atol=2.0)
    fraction = lungs.emphysema_fraction(volume)
    assert fraction is not None and 0.0 <= fraction < 0.5
