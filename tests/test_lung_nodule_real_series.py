"""The shipped model on the two real 1.25 mm chests of ../shared/data (no blending): regression checks.

Both series were training backgrounds of 0.3.0 (LIDC-IDRI-0002 with every reader mark kept out of the sampled
patches and candidates; the COVID chest as negatives), so these are checks that the shipped bundle still
behaves as its model card says, not held-out figures (MODEL_CARD.md, "Real data"). The Philips mass (finding 1)
is checked in test_lung_nodule_pipeline.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from demo.paths import COVID_CT, LIDC_0002
from pipelines.base import NoduleCategory
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.pipeline import LungNodulePipeline
from pipelines.lung_nodule.training.readers import cluster_marks, read_lidc_marks

pytestmark = [pytest.mark.ai, pytest.mark.slow, pytest.mark.needs("lidc-ct", "covid-ct")]


@pytest.fixture(scope="module")
def pipeline() -> LungNodulePipeline:
    return LungNodulePipeline(threads=2)


def test_lidc_0002_ground_glass_nodule_is_the_top_ranked_candidate(pipeline: LungNodulePipeline) -> None:
    volume = load_series_dir(LIDC_0002)
    (nodule,) = [c for c in cluster_marks(read_lidc_marks(LIDC_0002 / "071.xml", volume)) if c.nodule_readers >= 2]
    candidates = pipeline.candidates(volume)  # best first
    assert candidates, "no candidate at all on LIDC-IDRI-0002"
    top = candidates[0]
    distance = float(np.linalg.norm(np.subtract(top.centre_mm, nodule.centre_mm)))
    # LUNA16 hit rule: the candidate's centre within the nodule's radius (0.2.0 had no candidate near it).
    assert distance <= nodule.diameter_mm / 2, (distance, [c.summary() for c in candidates[:3]])
    assert top.category is NoduleCategory.GROUND_GLASS  # both readers rated its texture ground glass
    # Known limit (MODEL_CARD.md): its score is below the operating point, so it is not reported.
    result = pipeline.run(volume)
    assert len(result.findings) <= 1


def test_covid_opacities_are_not_reported_as_probably_malignant_nodules(pipeline: LungNodulePipeline) -> None:
    result = pipeline.run(load_series_dir(COVID_CT))
    # 0.2.0 reported 10 findings here, most of them opacities called malignant 0.56-0.93.
    assert len(result.findings) <= 1, [f.summary() for f in result.findings]
    threshold = float(pipeline.bundle.metadata["malignancy_threshold"])
    assert all(f.malignancy_probability < threshold for f in result.findings), [f.summary() for f in result.findings]
