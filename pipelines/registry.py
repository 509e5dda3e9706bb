"""Pipelines by name, imported lazily so that the node never imports torch unless a job needs it."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pipelines.base import Pipeline

# name -> "module:factory"; the factory takes no arguments and returns a ready Pipeline
# (model loaded). Workers call it once and reuse the instance for every job.
_FACTORIES: dict[str, str] = {
    "series-summary": "pipelines.series_summary:SeriesSummaryPipeline",
    "lung-nodule": "pipelines.lung_nodule.pipeline:LungNodulePipeline",
}


def pipeline_names() -> list[str]:
    return sorted(_FACTORIES)


def load_pipeline(name: str) -> Pipeline:
    try:
        target = _FACTORIES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(pipeline_names())}") from None
    module_name, _, attr = target.partition(":")
    factory: Callable[[], Pipeline] = getattr(importlib.import_module(module_name), attr)
    return factory()
