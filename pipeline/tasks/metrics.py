"""Prometheus metrics of the workers: a histogram per pipeline stage and outcome counters.

A prefork worker runs tasks in child processes, so the metrics use prometheus_client's
multiprocess mode: ``bonescan worker`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before the pool forks, every child writes its samples there, and the parent serves the sum on
``worker.metrics_port``. Labels are stage names and outcomes only, never UIDs or patient data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
# queue_wait: queued → started; inference: started → inference done (read, crop, model, SEG);
# seg_write: SEG + SR files; export_send: one C-STORE; verify: one C-FIND; end_to_end: the last
# instance's arrival → the job's last export delivered.
STAGES = ("queue_wait", "inference", "seg_write", "export_send", "verify", "end_to_end")


class WorkerMetrics:
    """The worker's metrics, in the default registry (which multiprocess mode aggregates)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kwargs = {"registry": registry} if registry is not None else {}
        self.stage_seconds = Histogram(
            "bonescan_worker_stage_seconds",
            "Seconds spent per pipeline stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            **kwargs,  # type: ignore[arg-type]
        )
        self.jobs = Counter(
            "bonescan_worker_jobs",
            "Segment jobs by outcome (segmented, failed, retried, skipped_duplicate)",
            ["outcome"],
            **kwargs,  # type: ignore[arg-type]
        )
        self.exports = Counter(
            "bonescan_worker_exports",
            "Export attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            **kwargs,  # type: ignore[arg-type]
        )

    def stage(self, name: str, seconds: float) -> None:
        self.stage_seconds.labels(name).observe(max(0.0, seconds))


_metrics: WorkerMetrics | None = None


def worker_metrics() -> WorkerMetrics:
    """The process-wide metrics object (created on first use)."""
    global _metrics  # noqa: PLW0603
    if _metrics is None:
        _metrics = WorkerMetrics()
    return _metrics


def prepare_multiprocess(directory: Path) -> None:
    """Point prometheus_client at ``directory`` (emptied) before anything records a sample."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def serve_multiprocess(host: str, port: int) -> None:
    """Serve the children's summed samples on ``host:port`` (call in the pool's parent)."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
    logger.info("metrics_listening host=%s port=%d", host, port)


def mark_dead(pid: int) -> None:
    """Tell multiprocess mode a pool child exited (its live gauges go away)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
