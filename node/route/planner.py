"""Turns a complete series into job rows, by the routing rules in the config."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import structlog

from node.work.jobs import queue_job

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PlannedJob:
    route: str
    pipeline: str
    destinations: tuple[str, ...]


class JobPlanner:
    """Chooses (pipeline, destinations) for a series. Until routing rules are configured, every
    CT series goes to the built-in default pipeline with no destinations."""

    def __init__(self, default_pipeline: str = "series-summary") -> None:
        self.default_pipeline = default_pipeline

    def plan(self, series: sqlite3.Row) -> list[PlannedJob]:
        if series["modality"] != "CT":
            return []
        return [PlannedJob(route="default-ct", pipeline=self.default_pipeline, destinations=())]

    def queue_jobs(self, conn: sqlite3.Connection, series: sqlite3.Row) -> list[int]:
        """Inside the completion transaction: one job per planned (pipeline, destinations)."""
        job_ids = []
        planned = self.plan(series)
        for p in planned:
            job_ids.append(
                queue_job(
                    conn,
                    series_uid=series["series_uid"],
                    study_uid=series["study_uid"],
                    generation=series["generation"],
                    pipeline=p.pipeline,
                    route=p.route,
                    destinations=list(p.destinations),
                )
            )
        if not planned:
            log.info(
                "series_not_routed",
                series_uid=series["series_uid"],
                modality=series["modality"],
                attributes=json.loads(series["attributes"]).get("SeriesDescription"),
            )
        return job_ids
