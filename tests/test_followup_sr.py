"""The follow-up SR on a real CT series: a prior's SR read back, the current nodules tracked against it, and
the new SR and SEG carrying the prior's Tracking UIDs, the growth, Lung-RADS and Brock risk.

Judges: dciodvfy (0 errors), highdicom (read back), DCMTK dsrdump (the content tree, kept in artifacts/).
The CT is real TCIA data; the nodules are spheres drawn into its geometry (tests/encode_helpers.py).
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from demo.paths import SIEMENS_CT
from node.encode import encode_results, write_results
from node.encode import followup as fsr
from pipelines.base import CTVolume
from pipelines.followup.assessment import (
    FollowUpReport,
    PatientContext,
    PriorExam,
    PriorOutcome,
    PriorSearch,
    assess_exam,
    patient_context,
)
from pipelines.followup.lungrads import Category
from pipelines.followup.tracking import Status
from tests.dciodvfy import judge
from tests.encode_helpers import load_ct, read_series, result_with, sphere_finding

pytestmark = [pytest.mark.peers, pytest.mark.needs("siemens-ct", "dciodvfy", "dcmtk")]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "followup"
# As in tests/test_encode_objects.py: warnings from the source CT's own header, copied unchanged.
# And one we accept knowingly: dciodvfy knows only the standard's coding schemes, and warns on the node's
# private one (99AINODE, declared in the Coding Scheme Identification Sequence as PS3.3 C.12.1 asks).
ACCEPTED_WARNINGS = (
    "Retired Person Name form",
    "needed to build DICOMDIR - Study ID",
    "Unrecognized defined term <99AINODE> for value 1 of attribute <Coding Scheme Designator>",
)
PRIOR_DATE = datetime.date(2025, 11, 20)
CURRENT_DATE = datetime.date(2026, 11, 20)
PATIENT = PatientContext(age_years=64.0, female=True)


@dataclass
class Case:
    volume: CTVolume
    prior_sr: pydicom.Dataset
    reading: FollowUpReport
    datasets: list[pydicom.Dataset]
    paths: list[Path]


def _sr(datasets: list[pydicom.Dataset]) -> pydicom.Dataset:
    return next(ds for ds in datasets if ds.Modality == "SR")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    sources = read_series(SIEMENS_CT)
    volume = load_ct(sources)
    z, y, x = volume.shape
    # Prior: three nodules. Current: the first grown (4 -> 5.5 mm radius), the second the same, the third
    # gone, and a new one. The "patient" lies 2 slices lower in the current exam: every current centre is the
    # prior's moved by the same voxels, and the lung centroids given to the reading say the same shift.
    prior_sites = [
        (z // 2, y // 2 - 60, x // 2 - 110),
        (z // 3, y // 2 + 20, x // 2 + 100),
        (z // 2, y // 2, x // 2 + 150),
    ]
    prior_result = result_with(
        [
            sphere_finding(volume, 1, prior_sites[0], 4.0, probability=0.4),
            sphere_finding(volume, 2, prior_sites[1], 3.0, probability=0.1, lobe=None),
            sphere_finding(volume, 3, prior_sites[2], 3.0, probability=0.1, lobe=None),
        ]
    )
    prior_sr = _sr(encode_results(prior_result, volume, sources, uid_seed="prior-job"))

    def moved(site: tuple[int, int, int]) -> tuple[int, int, int]:
        return (site[0] + 2, site[1], site[2])

    current = result_with(
        [
            sphere_finding(volume, 1, moved(prior_sites[0]), 5.5, probability=0.7),
            sphere_finding(volume, 2, moved(prior_sites[1]), 3.0, probability=0.1, lobe=None),
            sphere_finding(volume, 3, moved((z // 3, y // 2 - 40, x // 2 - 120)), 3.5, probability=0.2, lobe=None),
        ]
    )
    origin = volume.geometry.voxel_to_patient([0, 0, 0])
    shift = volume.geometry.voxel_to_patient([2, 0, 0]) - origin
    prior_centroid = (10.0, 20.0, -150.0)
    current_centroid = (10.0 + shift[0], 20.0 + shift[1], -150.0 + shift[2])
    prior = PriorExam(
        study_instance_uid="1.2.3.4",
        study_date=PRIOR_DATE,
        nodules=tuple(fsr.prior_nodules(prior_sr)),
        lung_centroid_mm=prior_centroid,
        source="the node's own earlier result",
        sr_sop_instance_uid=str(prior_sr.SOPInstanceUID),
    )
    reading = assess_exam(
        current.findings,
        study_date=CURRENT_DATE,
        lung_centroid_mm=current_centroid,
        emphysema_fraction=0.01,
        patient=PATIENT,
        prior=PriorSearch(PriorOutcome.COMPARED, "compared", prior),
    )
    datasets = encode_results(current, volume, sources, uid_seed="current-job", reading=reading)
    paths = write_results(datasets, tmp_path_factory.mktemp("followup"))
    return Case(volume, prior_sr, reading, datasets, paths)


def test_prior_nodules_read_back_from_the_nodes_own_sr(case: Case) -> None:
    nodules = fsr.prior_nodules(case.prior_sr)
    assert [n.tracking_id for n in nodules] == ["Nodule 1", "Nodule 2", "Nodule 3"]
    assert nodules[0].long_axis_mm == pytest.approx(8.0)
    assert all(n.tracking_uid.startswith("2.25.") for n in nodules)


def test_reading_gives_the_known_statuses(case: Case) -> None:
    r = case.reading
    assert [n.status for n in r.nodules] == [Status.GROWN, Status.STABLE, Status.NEW]
    assert [t.status for t in r.resolved] == [Status.RESOLVED]
    grown = r.nodules[0].tracked
    assert grown is not None and grown.growth is not None and grown.prior is not None
    assert grown.growth.interval_days == 365
    assert grown.growth.volume_change_fraction == pytest.approx((5.5 / 4.0) ** 3 - 1, rel=0.15)
    assert grown.distance_mm is not None and grown.distance_mm < 1.0  # the shift was taken out
    assert r.fastest_doubling_time_days == pytest.approx(grown.growth.doubling_time_days)
    # Nodule 1 is 11 x 9.9 mm (mean 10.4 mm, up by 3 mm > 1.5 mm): solid, growing, >= 8 mm: 4B.
    assert r.lungrads.category is Category.SUSPICIOUS_4B and r.lungrads.rule.startswith("nodule 1: solid")
    brock = r.nodules[0].brock
    assert brock.risk is not None and "spiculation" in brock.unknown and "family_history" in brock.unknown


def test_followup_sr_and_seg_are_valid(case: Case) -> None:
    for path, ds in zip(case.paths, case.datasets, strict=True):
        if ds.Modality in ("SR", "SEG"):
            judge(path, f"followup-{ds.Modality.lower()}", ACCEPTED_WARNINGS)


def test_tracking_uids_are_shared_with_the_prior(case: Case) -> None:
    prior = hd.sr.Comprehensive3DSR.from_dataset(case.prior_sr, copy=True).content
    sr_path = next(p for p, ds in zip(case.paths, case.datasets, strict=True) if ds.Modality == "SR")
    current = hd.sr.srread(sr_path).content
    assert isinstance(prior, hd.sr.MeasurementReport) and isinstance(current, hd.sr.MeasurementReport)
    prior_uids = {
        str(g.tracking_identifier): str(g.tracking_uid) for g in prior.get_volumetric_roi_measurement_groups()
    }
    groups = current.get_volumetric_roi_measurement_groups()
    ids = [(str(g.tracking_identifier), str(g.tracking_uid)) for g in groups]
    assert ids[0] == ("Nodule 1", prior_uids["Nodule 1"])
    assert ids[1] == ("Nodule 2", prior_uids["Nodule 2"])
    # The new nodule is finding 3 but "Nodule 3" is the resolved prior nodule: it gets the next free name.
    assert ids[2][0] == "Nodule 4" and ids[2][1] not in prior_uids.values()
    # The SEG segments carry the same identities.
    seg_path = next(p for p, ds in zip(case.paths, case.datasets, strict=True) if ds.Modality == "SEG")
    seg = hd.seg.segread(seg_path)
    assert [(seg.get_segment_description(i).tracking_id, seg.get_segment_description(i).tracking_uid)
            for i in (1, 2, 3)] == ids  # fmt: skip
    # Growth, status and Brock in the grown nodule's group.
    values = {m.name.meaning: m.value for m in groups[0].get_measurements()}
    assert values["Volume at prior exam"] == pytest.approx(case.reading.nodules[0].tracked.prior.volume_mm3)  # type: ignore[union-attr]
    assert values["Interval since prior exam"] == 365
    assert values["Volume doubling time"] == pytest.approx(case.reading.fastest_doubling_time_days)
    assert 0 < values["Brock (PanCan) probability of malignancy"] < 1
    evaluations = {e.name.meaning: e.value.meaning for e in groups[0].get_qualitative_evaluations()}
    assert evaluations["Change since prior exam"] == "grown"
    assert evaluations["Lung-RADS v2022 category (suggestion)"] == "Lung-RADS 4B"


def test_content_tree_names_comparison_category_and_resolved_nodule(case: Case) -> None:
    sr_path = next(p for p, ds in zip(case.paths, case.datasets, strict=True) if ds.Modality == "SR")
    env = {**os.environ, "TCP_NODELAY": "1"}
    tree = subprocess.run(["/usr/bin/dsrdump", "+Pl", "+Pc", str(sr_path)], capture_output=True, text=True,
                          check=True, env=env).stdout  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "followup-sr-dsrdump.txt").write_text(tree)
    assert "1 new, 1 grown, 1 stable, 0 shrunk, 1 resolved" in tree
    assert "Lung-RADS 4B" in tree and "(suggestion)" in tree
    assert "is not seen any more: resolved" in tree
    assert "Brock (PanCan) risk" in tree and "McWilliams" in tree


def test_no_prior_is_stated_and_the_exam_still_reported(case: Case) -> None:
    sources = read_series(SIEMENS_CT)
    z, y, x = case.volume.shape
    current = result_with([sphere_finding(case.volume, 1, (z // 2, y // 2 - 60, x // 2 - 110), 3.0)])
    for outcome, statement, category in [
        (PriorOutcome.NONE_FOUND, "no earlier CT of this patient in the last 1095 days", Category.BENIGN),
        (PriorOutcome.OTHER_BODY_PART, "earlier CT found, none of the chest (HEAD)", Category.BENIGN),
        (PriorOutcome.NOT_RETRIEVED, "the PACS refused to send the prior (C-GET failed)", Category.INCOMPLETE),
    ]:
        search = PriorSearch(outcome, statement)
        reading = assess_exam(
            current.findings,
            study_date=CURRENT_DATE,
            lung_centroid_mm=None,
            emphysema_fraction=None,
            patient=PATIENT,
            prior=search,
        )
        assert reading.lungrads.category is category
        assert reading.nodules[0].status is None
        sr = _sr(encode_results(current, case.volume, sources, uid_seed=f"job-{outcome}", reading=reading))
        assert any(statement in t for t in _texts(sr))
        assert "emphysema" in " ".join(reading.nodules[0].brock.unknown)  # no lung histogram: unknown, said


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR content tree."""
    out = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence", []):
        out += _texts(item)
    return out


def test_patient_context_from_header_strings() -> None:
    assert patient_context(patient_age="064Y", patient_sex="F", birth_date="", study_date="") == PatientContext(
        64.0, True
    )
    ctx = patient_context(patient_age="", patient_sex="M", birth_date="19600101", study_date="20260101")
    assert ctx.female is False and ctx.age_years == pytest.approx(66.0, abs=0.01)
    assert patient_context(patient_age="", patient_sex="O", birth_date="", study_date="") == PatientContext(None, None)
