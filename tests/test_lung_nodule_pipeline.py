"""LungNodulePipeline with the shipped weights, on the real series and on composite cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from demo.paths import SHARED_CT
from pipelines import registry
from pipelines.base import (
    CTVolume,
    NoduleCategory,
    PipelineResult,
    ResultStatus,
    SeriesInfo,
    SourceSlice,
    VolumeGeometry,
)
from pipelines.loading import load_series_dir
from pipelines.lung_nodule.config import MIN_LONG_AXIS_MM
from pipelines.lung_nodule.pipeline import LungNodulePipeline
from pipelines.lung_nodule.training.synthesis import blend, procedural_shape, render_alpha, voc_lesion_boxes

pytestmark = [pytest.mark.ai, pytest.mark.needs("siemens-ct", "philips-ct", "philips-annotations")]


@pytest.fixture(scope="module")
def pipeline() -> LungNodulePipeline:
    loaded = registry.load_pipeline("lung-nodule")
    assert isinstance(loaded, LungNodulePipeline)
    return loaded


@pytest.fixture(scope="module")
def siemens() -> CTVolume:
    return load_series_dir(SHARED_CT / "siemens-chest-99")


def test_model_identity_names_the_shipped_weights(pipeline: LungNodulePipeline) -> None:
    import hashlib

    from pipelines.lung_nodule.config import WEIGHTS_PATH

    assert pipeline.model.weights_sha256 == hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    assert WEIGHTS_PATH.stat().st_size < 8 * 1024 * 1024


@pytest.fixture(scope="module")
def philips() -> CTVolume:
    return load_series_dir(SHARED_CT / "philips-chest-64" / "dicom")


@pytest.fixture(scope="module")
def philips_result(pipeline: LungNodulePipeline, philips: CTVolume) -> PipelineResult:
    return pipeline.run(philips)


def test_philips_annotated_mass_is_found(philips: CTVolume, philips_result: PipelineResult) -> None:
    volume, result = philips, philips_result
    (box,) = voc_lesion_boxes(volume, SHARED_CT / "philips-chest-64" / "annotations")
    assert result.status is ResultStatus.COMPLETED
    assert result.disclaimer == "NOT FOR DIAGNOSTIC USE"
    inside = np.zeros(volume.shape, dtype=bool)
    inside[box] = True
    overlapping = [f for f in result.findings if (f.full_mask(volume.shape) & inside).any()]
    assert overlapping, [f.summary() for f in result.findings]
    mass = max(overlapping, key=lambda f: f.volume_mm3)
    assert mass.long_axis_mm > 20.0  # the annotated boxes are ~70 mm across
    assert mass.gradcam is not None and mass.gradcam.shape == mass.mask.shape
    assert float(mass.gradcam.min()) >= 0.0 and float(mass.gradcam.max()) <= 1.0
    # Findings are numbered by detection score, and none is smaller than a nodule readers would outline.
    scores = [f.detection_score for f in sorted(result.findings, key=lambda f: f.number)]
    assert scores == sorted(scores, reverse=True)
    assert [f.number for f in sorted(result.findings, key=lambda f: f.number)] == list(range(1, len(scores) + 1))
    assert all(f.long_axis_mm >= MIN_LONG_AXIS_MM for f in result.findings), [f.summary() for f in result.findings]


def test_the_false_positive_reducer_ships_and_prunes_candidates(
    pipeline: LungNodulePipeline, philips_result: PipelineResult
) -> None:
    assert pipeline.bundle.fp_reducer is not None
    assert pipeline.bundle.metadata["fp_reduction"]["real_series_check"]["philips-chest-64"]["found"] is True
    measurements = philips_result.measurements
    assert measurements["false_positive_reduction"] is True
    # Candidates below the reducer's operating point are not reported (the mass above still is).
    assert 0 < len(philips_result.findings) < int(measurements["candidates"])
    assert all(f.detection_score >= pipeline.detection_threshold for f in philips_result.findings)
    assert pipeline.detection_threshold == pipeline.bundle.metadata["detection_threshold"]


def _with_nodule(
    volume: CTVolume, centre: tuple[int, int, int], diameter_mm: float, seed: int
) -> tuple[CTVolume, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = dataclasses.replace(procedural_shape(rng, diameter_mm), category=NoduleCategory.SOLID)
    alpha = render_alpha(shape, volume.geometry.spacing_mm, 1.0, rng, volume.geometry.spacing_mm[0])
    hu = volume.hu.copy()
    corner = tuple(c - n // 2 for c, n in zip(centre, alpha.shape, strict=True))
    truth = blend(hu, alpha, corner, shape.category, rng)  # type: ignore[arg-type]
    return dataclasses.replace(volume, hu=hu), truth


def test_finds_a_known_nodule_in_a_composite_case_and_its_mask_lines_up(
    pipeline: LungNodulePipeline, siemens: CTVolume
) -> None:
    # Right lung, mid-chest of the Siemens series (lung parenchyma there, checked by the lung mask).
    volume, truth = _with_nodule(siemens, (60, 230, 130), 14.0, seed=3)
    result = pipeline.run(volume)
    assert result.status is ResultStatus.COMPLETED
    truth_centre = volume.geometry.voxel_to_patient(np.argwhere(truth).mean(axis=0))
    hits = [f for f in result.findings if np.linalg.norm(np.subtract(f.centre_mm, truth_centre)) < 7.0]
    assert hits, [f.summary() for f in result.findings]
    finding = hits[0]
    full = finding.full_mask(volume.shape)
    dice = 2 * (full & truth).sum() / (full.sum() + truth.sum())
    assert dice > 0.4
    # The centre reported in mm is the centroid of the mask on the source grid.
    assert np.allclose(volume.geometry.voxel_to_patient(np.argwhere(full).mean(axis=0)), finding.centre_mm, atol=0.5)
    # Size measurements are in the right range for a ~14 mm nodule.
    assert 7.0 < finding.long_axis_mm < 25.0
    assert 0.3 * (4 / 3 * np.pi * 7**3) < finding.volume_mm3 < 3 * (4 / 3 * np.pi * 7**3)


def test_results_are_deterministic(pipeline: LungNodulePipeline, siemens: CTVolume) -> None:
    volume, _ = _with_nodule(siemens, (60, 230, 130), 10.0, seed=5)
    first = pipeline.run(volume)
    second = pipeline.run(volume)
    a, b = first.summary(), second.summary()
    a.pop("timings_s")
    b.pop("timings_s")
    assert a == b
    for f, g in zip(first.findings, second.findings, strict=True):
        assert np.array_equal(f.mask, g.mask)
        assert f.gradcam is not None and g.gradcam is not None and np.array_equal(f.gradcam, g.gradcam)


def _synthetic(shape: tuple[int, int, int], spacing: tuple[float, float, float], **info: object) -> CTVolume:
    hu = np.full(shape, 40.0, dtype=np.float32)
    geometry = VolumeGeometry(spacing, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    slices = tuple(SourceSlice(f"1.2.3.{k}", "1.2.840.10008.5.1.4.1.1.2") for k in range(shape[0]))
    fields: dict[str, object] = {"modality": "CT", **info}
    return CTVolume(hu, geometry, slices, SeriesInfo(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("volume_args", "reason"),
    [
        (((40, 64, 64), (2.5, 0.7, 0.7), {"modality": "MR"}), "not CT"),
        (((40, 64, 64), (2.5, 0.7, 0.7), {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}), "localizer"),
        (((8, 64, 64), (2.5, 0.7, 0.7), {}), "too few slices"),
        (((30, 64, 64), (8.0, 0.7, 0.7), {}), "too thick"),
        (((60, 96, 96), (2.5, 3.0, 3.0), {}), "no lungs in view"),
    ],
)
def test_each_not_applicable_reason(
    pipeline: LungNodulePipeline,
    volume_args: tuple[tuple[int, int, int], tuple[float, float, float], dict[str, object]],
    reason: str,
) -> None:
    shape, spacing, info = volume_args
    result = pipeline.run(_synthetic(shape, spacing, **info))
    assert result.status is ResultStatus.NOT_APPLICABLE
    assert reason in result.reason
    assert result.findings == ()


def test_working_grid_mask_maps_back_onto_the_source_slices(pipeline: LungNodulePipeline) -> None:
    """A component on the 2 mm working grid lands on the same patient position on the source grid."""
    from pipelines.lung_nodule.preprocessing import WorkingGrid

    volume = _synthetic((40, 120, 120), (3.0, 0.7, 0.7))
    grid = WorkingGrid.for_source(volume.shape, volume.geometry.spacing_mm)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    centre_w = np.array([30.0, 20.0, 25.0])
    component = (zz - centre_w[0]) ** 2 + (yy - centre_w[1]) ** 2 + (xx - centre_w[2]) ** 2 <= 4**2
    probability = component.astype(np.float32) * 0.9
    from scipy import ndimage

    (sl,) = ndimage.find_objects(component.astype(int))
    cam = np.ones((32, 32, 32), dtype=np.float32)
    finding = pipeline._to_source(
        volume, grid, probability, component, sl, centre_w, 0.9, 0.3, cam, np.array([16, 16, 16])
    )
    assert finding is not None
    full = finding.full_mask(volume.shape)
    source_centre = np.argwhere(full).mean(axis=0)
    # Same place in patient space (within a source voxel), whatever the two grids' spacings.
    expected_mm = volume.geometry.voxel_to_patient(grid.to_source(centre_w))
    assert np.linalg.norm(volume.geometry.voxel_to_patient(source_centre) - expected_mm) < 1.5
    assert np.allclose(finding.centre_mm, volume.geometry.voxel_to_patient(source_centre), atol=1e-6)
    # A 4-voxel (8 mm) radius sphere: ~2.1 cm3, ~16 mm across.
    assert 0.6 * 2145 < finding.volume_mm3 < 1.4 * 2145
    assert 13.0 < finding.long_axis_mm < 19.0
    assert finding.gradcam is not None and finding.gradcam.shape == finding.mask.shape


def test_a_component_thinned_away_by_interpolation_keeps_its_working_grid_outline(
    pipeline: LungNodulePipeline,
) -> None:
    """A small component just above the threshold vanishes when its probability is interpolated onto
    the source grid; it is then outlined at working-grid resolution instead of being lost (one such
    component was a real nodule in the held-out evaluation)."""
    from scipy import ndimage

    from pipelines.lung_nodule.preprocessing import WorkingGrid

    volume = _synthetic((40, 120, 120), (3.0, 0.7, 0.7))
    grid = WorkingGrid.for_source(volume.shape, volume.geometry.spacing_mm)
    component = np.zeros(grid.shape, dtype=bool)
    component[30:32, 20:22, 25:27] = True  # 2 x 2 x 2 working voxels: 4 mm across
    probability = component.astype(np.float32) * 0.501
    (sl,) = ndimage.find_objects(component.astype(int))
    centre_w = np.argwhere(component).mean(axis=0)
    cam = np.ones((32, 32, 32), dtype=np.float32)
    # Interpolated onto the source grid, no voxel clears the threshold...
    finding = pipeline._to_source(
        volume, grid, probability, component, sl, centre_w, 0.501, 0.3, cam, np.array([16, 16, 16])
    )
    # ...yet the finding keeps an outline the size of its 4 mm working-grid component.
    assert finding is not None
    assert 3.0 <= finding.long_axis_mm <= 7.0
    expected_mm = volume.geometry.voxel_to_patient(grid.to_source(centre_w))
    assert np.linalg.norm(np.subtract(finding.centre_mm, expected_mm)) < 2.0
