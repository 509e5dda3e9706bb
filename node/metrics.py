"""Prometheus metrics of the node (one registry, shared by every stage in the main process).

Counts that live in the index (jobs by state, deliveries by state, queue depth) are read from it
at scrape time by the HTTP layer, so they are right even when work happens in other processes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

instances_received = Counter(
    "ainode_instances_received_total", "Instances stored durably", ["source", "result"], registry=REGISTRY
)
bytes_received = Counter("ainode_bytes_received_total", "Dataset bytes stored", ["source"], registry=REGISTRY)
instances_rejected = Counter(
    "ainode_instances_rejected_total",
    "Instances refused with a failure status",
    ["source", "reason"],
    registry=REGISTRY,
)
associations = Counter("ainode_associations_total", "DICOM associations by outcome", ["outcome"], registry=REGISTRY)
active_associations = Gauge("ainode_associations_active", "Open DICOM associations", registry=REGISTRY)
series_completed = Counter("ainode_series_completed_total", "Series judged complete", ["reason"], registry=REGISTRY)
# ainode_job_duration_seconds (histogram by pipeline and outcome) is built from the index at scrape
# time by node/api/metrics.py: jobs finish in worker processes, where an in-process histogram of this
# process would never be observed.
index_write_failures = Counter(
    "ainode_index_write_failures_total",
    "Stored instances the index could not take (their files wait in the spool for start-up reconciliation)",
    registry=REGISTRY,
)
# node/audit: messages the writer thread handled; dropped ones never reached the collector (the local
# file still has them unless the reason is queue_full).
audit_messages = Counter(
    "ainode_audit_messages_total", "Audit messages sent to the collector", ["event"], registry=REGISTRY
)
audit_messages_dropped = Counter(
    "ainode_audit_messages_dropped_total",
    "Audit messages not sent to the collector (queue_full: not written to the local file either)",
    ["reason"],
    registry=REGISTRY,
)
