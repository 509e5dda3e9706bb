"""Index-derived metrics, read at scrape time by a custom collector on ``node.metrics.REGISTRY``.

Jobs run in worker processes and deliveries change in the outbox thread: counting them from the
index (rather than from in-process counters) keeps the numbers right across processes and restarts.
The job duration histogram is built the same way, from ``started_at``/``finished_at`` of finished
jobs, labelled by pipeline and outcome; it only grows as jobs finish, as a histogram must.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from node import metrics
from node.index import queries
from node.index.db import Database, now
from node.index.health import health_rows
from node.index.states import DeliveryState, JobState, SeriesState

log = structlog.get_logger(__name__)

_UP = ("ainode_destination_up", "1 while the destination answers, 0 while it is down and probed")
_OLDEST_DELIVERY = (
    "ainode_oldest_waiting_delivery_age_seconds",
    "Age of the oldest delivery not yet sent to the destination (0: none waiting)",
)
JOB_DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

stow_requests = Counter(
    "ainode_stow_requests_total",
    "STOW-RS requests by HTTP status",
    ["status"],
    registry=metrics.REGISTRY,
)


class IndexCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Metric]:
        # Declared names let the registry refuse a clash at registration, without a scrape.
        return [
            GaugeMetricFamily("ainode_jobs", "Jobs in the index by state", labels=["state"]),
            GaugeMetricFamily("ainode_deliveries", "Deliveries in the index by state", labels=["state"]),
            GaugeMetricFamily("ainode_series", "Series in the index by completeness state", labels=["state"]),
            GaugeMetricFamily("ainode_studies", "Studies in the index"),
            GaugeMetricFamily("ainode_job_queue_depth", "Jobs waiting for a worker"),
            GaugeMetricFamily("ainode_delivery_queue_depth", "Deliveries waiting to be sent (pending or retry)"),
            GaugeMetricFamily("ainode_oldest_queued_job_age_seconds", "Age of the oldest queued job (0: none)"),
            GaugeMetricFamily(_UP[0], _UP[1], labels=["destination"]),
            GaugeMetricFamily(_OLDEST_DELIVERY[0], _OLDEST_DELIVERY[1], labels=["destination"]),
            HistogramMetricFamily(
                "ainode_job_duration_seconds", "Wall time of finished jobs", labels=["pipeline", "outcome"]
            ),
        ]

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except Exception:  # a locked or missing index must not break the scrape of the other metrics
            log.exception("metrics_index_read_failed")

    def _collect(self) -> Iterator[Metric]:
        jobs = queries.counts_by_state(self.db, "jobs")
        g = GaugeMetricFamily("ainode_jobs", "Jobs in the index by state", labels=["state"])
        for job_state in JobState:
            g.add_metric([job_state.value], jobs.get(job_state, 0))
        yield g
        deliveries = queries.counts_by_state(self.db, "deliveries")
        g = GaugeMetricFamily("ainode_deliveries", "Deliveries in the index by state", labels=["state"])
        for delivery_state in DeliveryState:
            g.add_metric([delivery_state.value], deliveries.get(delivery_state, 0))
        yield g
        series = queries.counts_by_state(self.db, "series")
        g = GaugeMetricFamily("ainode_series", "Series in the index by completeness state", labels=["state"])
        for series_state in SeriesState:
            g.add_metric([series_state.value], series.get(series_state, 0))
        yield g
        yield GaugeMetricFamily("ainode_studies", "Studies in the index", value=queries.study_count(self.db))
        yield GaugeMetricFamily(
            "ainode_job_queue_depth", "Jobs waiting for a worker", value=jobs.get(JobState.QUEUED, 0)
        )
        yield GaugeMetricFamily(
            "ainode_delivery_queue_depth",
            "Deliveries waiting to be sent (pending or retry)",
            value=deliveries.get(DeliveryState.PENDING, 0) + deliveries.get(DeliveryState.RETRY, 0),
        )
        oldest = queries.oldest_queued_job_created_at(self.db)
        age = 0.0 if oldest is None else max(0.0, now() - oldest)
        yield GaugeMetricFamily(
            "ainode_oldest_queued_job_age_seconds", "Age of the oldest queued job (0: none)", value=age
        )
        yield from self._destinations()
        yield self._durations()

    def _destinations(self) -> Iterator[Metric]:
        health = health_rows(self.db)
        up = GaugeMetricFamily(*_UP, labels=["destination"])
        for h in health:
            up.add_metric([h.destination], 1.0 if h.up else 0.0)
        yield up
        t = now()
        oldest = queries.oldest_unsent_delivery_by_destination(self.db)
        age = GaugeMetricFamily(*_OLDEST_DELIVERY, labels=["destination"])
        for name in sorted({h.destination for h in health} | set(oldest)):
            age.add_metric([name], max(0.0, t - oldest[name]) if name in oldest else 0.0)
        yield age

    def _durations(self) -> HistogramMetricFamily:
        rows = queries.job_duration_histogram(self.db, JOB_DURATION_BUCKETS)
        h = HistogramMetricFamily(
            "ainode_job_duration_seconds", "Wall time of finished jobs", labels=["pipeline", "outcome"]
        )
        for r in rows:
            buckets = [(_le(b), float(r[f"b{i}"])) for i, b in enumerate(JOB_DURATION_BUCKETS)]
            buckets.append(("+Inf", float(r["n"])))
            h.add_metric([r["pipeline"], r["outcome"]], buckets, float(r["total"] or 0.0))
        return h


def _le(bound: float) -> str:
    return str(bound)


_registered: IndexCollector | None = None


def register_index_collector(db: Database, registry: CollectorRegistry = metrics.REGISTRY) -> IndexCollector:
    """One index collector per process: a second app (tests) replaces the first."""
    global _registered
    if _registered is not None:
        registry.unregister(_registered)
    _registered = IndexCollector(db)
    registry.register(_registered)
    return _registered
