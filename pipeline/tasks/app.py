"""The worker's Celery app: :func:`make_celery` plus the two tasks, registered by stable name.

Tasks are thin: they build this process's :class:`~pipeline.tasks.runtime.Runtime` (after fork)
and call the plain functions of :mod:`pipeline.tasks.segment` and :mod:`pipeline.tasks.export`.
Follow-up messages are sent *after* the database commit that makes them meaningful, and losing
one is harmless: the listener's sweeper re-offers stalled jobs and overdue exports.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.celery_app import make_celery
from pipeline.settings import Settings
from pipeline.tasks.names import QueueName, TaskName

logger = logging.getLogger(__name__)

# Transient errors of the task's own infrastructure (database, files): retried with backoff.
SEGMENT_RETRY_BASE_S = 5.0
SEGMENT_RETRY_MAX_S = 300.0
SEGMENT_MAX_RETRIES = 10
# Both tasks: redelivered if the worker dies mid-task, no result stored (FACTS.md).
TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": SEGMENT_MAX_RETRIES,
}


def send_exports(app: Celery, export_ids: list[int], countdown: float | None = None) -> None:
    """Queue one export task per id (a failed send leaves the export for the sweeper)."""
    for export_id in export_ids:
        try:
            app.send_task(
                TaskName.EXPORT_RESULT.value,
                kwargs={"export_id": export_id},
                queue=QueueName.EXPORT.value,
                countdown=countdown,
            )
        except Exception as error:  # kombu/redis errors vary; the sweeper resends
            logger.warning("export_not_queued export=%d error=%s", export_id, error)


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register ``bonescan.segment_series`` and ``bonescan.export_result`` on ``app``."""
    from pipeline.tasks.export import run_export  # noqa: PLC0415
    from pipeline.tasks.metrics import worker_metrics  # noqa: PLC0415
    from pipeline.tasks.runtime import runtime  # noqa: PLC0415
    from pipeline.tasks.segment import run_segment  # noqa: PLC0415

    @app.task(  # type: ignore[untyped-decorator]
        name=TaskName.SEGMENT_SERIES.value,
        **TASK_OPTIONS,
    )
    def segment_series(self: Task[Any, Any], job_id: int) -> None:
        rt = runtime(settings)
        metrics = worker_metrics()
        try:
            outcome = run_segment(rt, job_id, metrics)
        except (OperationalError, DBAPIError, OSError) as error:
            delay = min(SEGMENT_RETRY_MAX_S, SEGMENT_RETRY_BASE_S * 2**self.request.retries)
            metrics.jobs.labels("retried").inc()
            logger.warning("job_retry job=%d in=%.0fs error=%s", job_id, delay, error)
            raise self.retry(countdown=delay, exc=error) from None
        send_exports(self.app, outcome.export_ids)
        if outcome.recheck_in is not None:
            # Held by another worker: look again once its lease has run out, in case it died.
            self.app.send_task(
                TaskName.SEGMENT_SERIES.value,
                kwargs={"job_id": job_id},
                queue=QueueName.SEGMENT.value,
                countdown=outcome.recheck_in,
            )

    @app.task(  # type: ignore[untyped-decorator]
        name=TaskName.EXPORT_RESULT.value,
        **TASK_OPTIONS,
    )
    def export_result(self: Task[Any, Any], export_id: int) -> None:
        rt = runtime(settings)
        try:
            outcome = run_export(rt, export_id, worker_metrics())
        except (OperationalError, DBAPIError) as error:
            delay = min(SEGMENT_RETRY_MAX_S, SEGMENT_RETRY_BASE_S * 2**self.request.retries)
            logger.warning("export_task_retry export=%d in=%.0fs error=%s", export_id, delay, error)
            raise self.retry(countdown=delay, exc=error) from None
        if outcome.retry_in is not None:
            send_exports(self.app, [export_id], countdown=outcome.retry_in)


def make_worker_app(settings: Settings) -> Celery:
    """The Celery app a worker runs: broker from ``settings``, both tasks registered."""
    app = make_celery(settings)
    app.conf.update(worker_hijack_root_logger=False, worker_redirect_stdouts=False)
    register_tasks(app, settings)
    return app
