"""Pipelines by name: what each declares (outputs, options) without importing it, and building one.

The node reads a pipeline's :class:`~pipelines.base.PipelineSpec` to validate its configuration and to
choose encoders; the pipeline's own module (and torch) is imported only when a worker, or
``ainode analyze``, builds it with :func:`load_pipeline`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from pipelines import series_summary
from pipelines.base import Output, Pipeline, PipelineFactory, PipelineOptions, PipelineSpec, RuntimeOptions
from pipelines.lung_nodule import contract as lung_nodule

_SPECS: dict[str, PipelineSpec] = {spec.name: spec for spec in (series_summary.SPEC, lung_nodule.SPEC)}


def pipeline_names() -> list[str]:
    return sorted(_SPECS)


def pipeline_spec(name: str) -> PipelineSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(pipeline_names())}") from None


def pipeline_outputs(name: str) -> frozenset[Output]:
    return pipeline_spec(name).outputs


def pipeline_options(name: str, values: Mapping[str, Any] | None = None) -> PipelineOptions:
    """``values`` checked against the pipeline's options; ValueError naming the option and the reason."""
    spec = pipeline_spec(name)
    try:
        return spec.options.model_validate(dict(values or {}))
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}" for e in exc.errors())
        known = ", ".join(spec.options.model_fields) or "none"
        raise ValueError(f"{reasons} (options of {name}: {known})") from None


def load_pipeline(
    name: str, runtime: RuntimeOptions | None = None, options: Mapping[str, Any] | None = None
) -> Pipeline:
    """Build pipeline ``name`` (its model loaded) for ``runtime`` with its ``options``.

    Workers call this once per pipeline and reuse the instance for every job.
    """
    spec = pipeline_spec(name)
    checked = pipeline_options(name, options)
    module_name, _, attr = spec.factory.partition(":")
    factory: PipelineFactory = getattr(importlib.import_module(module_name), attr)
    pipeline = factory(runtime or RuntimeOptions(), checked)
    if pipeline.outputs != spec.outputs:  # the registry and the pipeline must tell the node the same
        raise TypeError(f"pipeline {name!r} declares outputs {set(pipeline.outputs)}, its spec {set(spec.outputs)}")
    return pipeline
