"""Prometheus metrics of the review page, served on ``BONESCAN_REVIEW__METRICS_PORT``."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ReviewMetrics:
    """Requests by status class and their latency, and reviews recorded, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bonescan_review_requests",
            "HTTP requests answered by the review page, by status class (2xx, 3xx, 4xx, 5xx).",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bonescan_review_request_seconds",
            "Time to answer one review-page request.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, status: int, seconds: float) -> None:
        self.requests.labels(f"{status // 100}xx").inc()
        self.latency.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` over HTTP on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics_listening host=%s port=%d", host, port)
