"""The node's registry and the instruments code feeds directly: per request, per peer joining, per
job finished, per event-loop sample. Nothing here is touched per media packet."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

# No ``*_created`` series beside every counter and histogram: they double the output and no
# dashboard of ours reads them (process-wide, as the library has it).
disable_created_metrics()

# Seconds: an API answer, a peer's wait for media, a job, a stall of the event loop.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOIN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
JOB_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WEBHOOK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """One registry per application, so that several applications in one process (tests, an
    embedding program) never mix their series."""

    def __init__(self, version: str, node_id: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        info = Gauge(
            "huiyi_build_info",
            "Always 1; the version and node id as labels",
            ["version", "node_id"],
            registry=self.registry,
        )
        info.labels(version, node_id).set(1)
        self.http_requests = Counter(
            "huiyi_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "huiyi_http_request_duration_seconds",
            "Time to answer an HTTP request (signaling sockets excluded), by method and route template",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.join_seconds = Histogram(
            "huiyi_sfu_join_seconds",
            "From a peer joining a room's media (its signaling join) to the first media packet forwarded to it",
            buckets=JOIN_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "huiyi_job_duration_seconds",
            "Media jobs finished on this node, from start to end, by kind and final state",
            ["kind", "state"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "huiyi_event_loop_lag_seconds",
            "How late the event loop ran a callback due now (sampled twice a second)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "huiyi_webhook_deliveries",
            "Webhook delivery attempts made by this node, by outcome (delivered, failed, dropped)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "huiyi_webhook_delivery_duration_seconds",
            "Time a receiver took to answer a webhook delivery",
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )
