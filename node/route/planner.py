"""Turns a complete series into job rows, by the routing rules in the config."""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog

from node.config.routes import Route
from node.index.db import Connection, Row
from node.index.jobs import queue_job
from node.route.evaluation import RoutingDecision, evaluate_routes
from node.route.explanation import explain_decision

log = structlog.get_logger(__name__)


class JobPlanner:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)

    def decide(self, series: Row) -> RoutingDecision:
        attributes = json.loads(series["attributes"] or "{}")
        return evaluate_routes(
            self.routes,
            attributes,
            series["calling_ae"] or "",
            series["called_ae"] or "",
            series_uid=series["series_uid"],
        )

    def queue_jobs(self, conn: Connection, series: Row) -> list[int]:
        """Inside the completion transaction: one job per (pipeline, its destinations)."""
        decision = self.decide(series)
        route_names = ",".join(r.name for r in decision.matched)
        job_ids = [
            queue_job(
                conn,
                series_uid=series["series_uid"],
                study_uid=series["study_uid"],
                generation=series["generation"],
                pipeline=pipeline,
                route=route_names,
                destinations=list(destinations),
            )
            for pipeline, destinations in decision.jobs().items()
        ]
        if not job_ids:
            # The explanation names tags and values only (routing attributes hold no patient identity).
            log.info("series_not_routed", series_uid=series["series_uid"], explanation=explain_decision(decision))
        return job_ids
