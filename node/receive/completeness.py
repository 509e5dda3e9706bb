"""When is a series complete? Within seconds when its geometry says so, else after a quiet period.

A PACS never says "that was the last image". Waiting for a long quiet period (mercure waits at
least 60 s) is safe but slow; a CT series whose slice positions, projected on the slice normal,
form one evenly spaced run with no gap (and match ImagesInAcquisition when the scanner sends it)
is complete as soon as a short settle time has passed with no new instance. An instance arriving
later re-opens the series (see ``node.index.series.reopen_series``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from node import metrics
from node.config import CompletenessConfig
from node.index import series as series_index
from node.index.db import Database, Row, now
from node.route.planner import JobPlanner

log = structlog.get_logger(__name__)

MIN_SLICES_FOR_GEOMETRY = 3
ORIENTATION_TOLERANCE = 1e-3
DUPLICATE_POSITION_MM = 1e-3


@dataclass(frozen=True)
class GeometryVerdict:
    complete: bool
    reason: str


def judge_geometry(instances: Sequence[Mapping[str, Any]], spacing_tolerance: float) -> GeometryVerdict:
    """Does this set of instances form a complete volume by its geometry alone?"""
    if len(instances) == 1 and int(instances[0]["number_of_frames"] or 1) > 1:
        return GeometryVerdict(True, "multi-frame instance")
    if len(instances) < MIN_SLICES_FOR_GEOMETRY:
        return GeometryVerdict(False, f"only {len(instances)} instance(s)")
    positions, orientations = [], []
    for inst in instances:
        if inst["image_position"] is None or inst["image_orientation"] is None:
            return GeometryVerdict(False, "instance without ImagePositionPatient/ImageOrientationPatient")
        positions.append(json.loads(str(inst["image_position"])))
        orientations.append(json.loads(str(inst["image_orientation"])))
    iop = np.asarray(orientations, dtype=float)
    if np.abs(iop - iop[0]).max() > ORIENTATION_TOLERANCE:
        return GeometryVerdict(False, "instances differ in orientation")
    normal = np.cross(iop[0, :3], iop[0, 3:])
    along = np.sort(np.asarray(positions, dtype=float) @ normal)
    steps = np.diff(along)
    if steps.min() < DUPLICATE_POSITION_MM:
        return GeometryVerdict(False, "two instances at the same position")
    spacing = float(np.median(steps))
    if np.abs(steps - spacing).max() > spacing_tolerance * spacing:
        gap_at = int(np.argmax(np.abs(steps - spacing)))
        return GeometryVerdict(False, f"uneven spacing or a gap after slice {gap_at + 1}")
    expected = {int(i["images_in_acquisition"]) for i in instances if i["images_in_acquisition"]}
    if len(expected) == 1 and len(instances) != next(iter(expected)):
        return GeometryVerdict(False, f"{len(instances)} of {next(iter(expected))} ImagesInAcquisition")
    return GeometryVerdict(True, f"{len(instances)} slices evenly spaced at {spacing:.3g} mm")


class CompletenessMonitor:
    """Checks receiving series on a tick; completes them and queues their jobs in one transaction."""

    def __init__(self, db: Database, config: CompletenessConfig, planner: JobPlanner) -> None:
        self.db = db
        self.config = config
        self.planner = planner
        self._scheduler: BackgroundScheduler | None = None

    def start(self) -> None:
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(
            self.check_once,
            "interval",
            seconds=self.config.check_interval_s,
            max_instances=1,
            coalesce=True,
            id="completeness",
        )
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def check_once(self) -> list[str]:
        """One pass. Returns the series UIDs that were completed (for tests and the CLI)."""
        t = now()
        completed = []
        candidates = series_index.receiving_series_quiet_since(self.db, t - self.config.settle_s)
        for series in candidates:
            quiet_for = t - series["last_received_at"]
            if quiet_for >= self.config.quiet_period_s:
                reason = f"quiet for {quiet_for:.0f} s"
                kind = "quiet_period"
            else:
                instances = series_index.instance_geometry(self.db, series["series_uid"])
                verdict = judge_geometry(instances, self.config.spacing_tolerance)
                if not verdict.complete:
                    continue
                reason, kind = f"geometry: {verdict.reason}", "geometry"
            if self._complete(series, reason):
                metrics.series_completed.labels(reason=kind).inc()
                completed.append(series["series_uid"])
        return completed

    def _complete(self, series: Row, reason: str) -> bool:
        with self.db.transaction() as conn:
            # Re-read inside the transaction: an instance may have arrived since the check.
            current = series_index.receiving_series_unchanged(conn, series["series_uid"], series["last_received_at"])
            if current is None:
                return False
            series_index.mark_series_complete(conn, series["series_uid"], now(), reason)
            job_ids = self.planner.queue_jobs(conn, current)
        log.info(
            "series_complete",
            series_uid=series["series_uid"],
            reason=reason,
            instances=series["instance_count"],
            generation=series["generation"],
            jobs=job_ids,
        )
        return True
