"""A small real pipeline: what a CT series is, in numbers (no model).

Used to route work end-to-end before (and besides) the AI: slice count and spacing, field of
view, HU statistics inside the body, and the air-like volume inside the body (a rough lung
volume). Its output is measurements only, never findings.
"""

from __future__ import annotations

import time

import numpy as np

from pipelines.base import (
    CTVolume,
    ModelIdentity,
    NotApplicable,
    PipelineOptions,
    PipelineResult,
    PipelineSpec,
    ResultStatus,
    RuntimeOptions,
)

BODY_HU_THRESHOLD = -500.0  # above: tissue; the body is the largest such region (not needed exactly)
LUNG_HU_RANGE = (-950.0, -500.0)

# Measurements only: the job summary holds them, nothing is encoded. No options.
SPEC = PipelineSpec(name="series-summary", factory="pipelines.series_summary:build", outputs=frozenset())


class SeriesSummaryPipeline:
    name = SPEC.name
    model = ModelIdentity(name="series-summary", version="1.0", weights_sha256="")
    outputs = SPEC.outputs

    def run(self, volume: CTVolume) -> PipelineResult:
        start = time.perf_counter()
        try:
            if volume.info.modality != "CT":
                raise NotApplicable(f"modality {volume.info.modality or 'unknown'} is not CT")
        except NotApplicable as exc:
            return PipelineResult.not_applicable(self.name, self.model, exc.reason)
        hu = volume.hu
        dz, dy, dx = volume.geometry.spacing_mm
        voxel_ml = dz * dy * dx / 1000.0
        # The body: voxels denser than fat/air boundary, per slice rows between its first and last.
        body = hu > BODY_HU_THRESHOLD
        lungish = (hu >= LUNG_HU_RANGE[0]) & (hu <= LUNG_HU_RANGE[1])
        # Air inside the body's bounding box along each row: excludes the air around the patient.
        rows_with_body = body.any(axis=2, keepdims=True)
        first = np.argmax(body, axis=2)[..., None]
        last = hu.shape[2] - 1 - np.argmax(body[..., ::-1], axis=2)[..., None]
        cols = np.arange(hu.shape[2])[None, None, :]
        inside = rows_with_body & (cols > first) & (cols < last)
        body_values = hu[body]
        measurements: dict[str, float | int | str] = {
            "slices": int(hu.shape[0]),
            "rows": int(hu.shape[1]),
            "columns": int(hu.shape[2]),
            "slice_spacing_mm": round(dz, 3),
            "pixel_spacing_mm": round(dy, 3),
            "z_extent_mm": round(dz * (hu.shape[0] - 1), 1),
            "hu_min": float(hu.min()),
            "hu_max": float(hu.max()),
            "body_hu_mean": round(float(body_values.mean()), 1) if body_values.size else 0.0,
            "body_hu_std": round(float(body_values.std()), 1) if body_values.size else 0.0,
            "air_inside_body_ml": round(float((lungish & inside).sum()) * voxel_ml, 1),
        }
        return PipelineResult(
            pipeline=self.name,
            status=ResultStatus.COMPLETED,
            model=self.model,
            measurements=measurements,
            timings_s={"total": time.perf_counter() - start},
        )


def build(runtime: RuntimeOptions, options: PipelineOptions) -> SeriesSummaryPipeline:
    """The registry's factory (numpy only: device and threads do not apply)."""
    return SeriesSummaryPipeline()
