"""Prometheus metrics of the listener, served on ``listener.metrics_port`` when it is set.

Labels carry short codes only (a rejection reason, a skip code), never UIDs or patient data.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ListenerMetrics:
    """The listener's counters and the C-STORE handler latency histogram, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.associations = Counter(
            "bonescan_listener_associations",
            "Association requests by outcome (accepted, or rejected and why)",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.instances = Counter(
            "bonescan_listener_instances_received",
            "C-STORE requests by answer (stored, duplicate, refused, out_of_resources)",
            ["result"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "bonescan_listener_received_bytes",
            "Bytes of instances written to the spool",
            registry=self.registry,
        )
        self.skipped = Counter(
            "bonescan_listener_instances_skipped",
            "Instances stored but not a whole-body bone scan, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "bonescan_listener_jobs",
            "Jobs opened and enqueued by the listener",
            ["event"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "bonescan_listener_store_handler_seconds",
            "Time from a complete C-STORE request to the answer",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_store(self, seconds: float) -> None:
        """One C-STORE's handler latency (from the complete request to the answer)."""
        self.store_seconds.observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` over HTTP on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics_listening host=%s port=%d", host, port)
