"""What the node knows of the lung-nodule pipeline without importing it (and torch): outputs and options."""

from __future__ import annotations

from pydantic import Field

from pipelines.base import Output, PipelineOptions, PipelineSpec


class LungNoduleOptions(PipelineOptions):
    """``workers.pipeline_options.lung-nodule`` in the node's configuration."""

    # The operating point on the detection score; None: the one chosen on validation, stored with the weights.
    detection_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


SPEC = PipelineSpec(
    name="lung-nodule",
    factory="pipelines.lung_nodule.pipeline:build",
    outputs=frozenset({Output.FINDINGS}),
    options=LungNoduleOptions,
)
