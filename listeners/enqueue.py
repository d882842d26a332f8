"""Hand opened jobs to the broker by task name, after their row is committed (warehouse manner).

A broker that is down must not hold a modality's association, so a failed send leaves the job
``received`` in the database and backs off; the sweeper offers it again later.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from listeners.database import Sessions
from listeners.metrics import ListenerMetrics
from pipeline.db import filing
from pipeline.settings import Settings
from pipeline.tasks.names import QueueName, TaskName

logger = logging.getLogger(__name__)

BACKOFF_S = 2.0
# One quick retry inside kombu; the sweeper is the real retry loop.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class TaskSender:
    """Celery's ``send_task`` by task name, backing off while the broker is down.

    The listener's :class:`Enqueuer` sends through one; so does the sender process
    (:mod:`listeners.sender`), which has no database.
    """

    def __init__(self, settings: Settings, metrics: ListenerMetrics) -> None:
        self._metrics = metrics
        self._celery: Any = None
        self._send_errors: tuple[type[BaseException], ...] = (OSError,)
        self._broker_url = settings.broker_url
        self._settings = settings
        self._down_until = 0.0
        self._down_logged = False

    def _app(self) -> Any:
        if self._celery is None:
            # Celery, kombu and redis load in warm_up(), or on first use.
            from kombu.exceptions import KombuError  # noqa: PLC0415
            from redis.exceptions import RedisError  # noqa: PLC0415

            from pipeline.celery_app import make_celery  # noqa: PLC0415

            self._send_errors = (KombuError, RedisError, OSError)
            self._celery = make_celery(self._settings)
        return self._celery

    def warm_up(self) -> None:
        """Load Celery, kombu and redis now (before the port opens), not while the first scans
        arrive: the import takes most of a second of the one interpreter lock. Nothing
        connects to the broker here, so a broker that is down does not delay listening."""
        if self._broker_url is not None:
            self._app()

    @property
    def available(self) -> bool:
        """False without a broker URL, or while backing off after a failed send."""
        return self._broker_url is not None and time.monotonic() >= self._down_until

    def resend(self, task: TaskName, queue: QueueName, **kwargs: int) -> bool:
        """Send ``task`` again for a job or export whose message may be lost (the sweeper's
        safety net); harmless when it was not: the workers' claims make a duplicate a no-op."""
        if not self.available:
            return False
        try:
            self._app().send_task(
                task.value, kwargs=kwargs, queue=queue.value, retry=True, retry_policy=RETRY_POLICY
            )
        except self._send_errors as error:
            self._down_until = time.monotonic() + BACKOFF_S
            logger.warning("broker_unreachable resend=%s error=%s", task.value, error)
            return False
        self._metrics.jobs.labels("resent").inc()
        logger.info("task_resent task=%s %s", task.value, kwargs)
        return True

    def send(self, job_ids: list[int]) -> list[int]:
        """Send each job's ``segment_series``; the ids the broker took (all, or none).

        One producer and one pipelined round trip for all of them (kombu's publish batch):
        ~0.55 ms of Python for one task, ~0.33 ms per task for 4, ~0.28 for 8 (1200 tasks on
        the benchmark's VM; Celery's ``send_task`` one by one: ~0.53 ms each). When the broker fails
        the whole batch counts as not sent, though part of it may have reached the broker: the
        sweeper sends those jobs again, and the workers' claims make a duplicate a no-op.
        """
        if not self.available or not job_ids:
            return []
        app = self._app()
        try:
            with app.producer_or_acquire() as producer, producer.batch(max_size=len(job_ids)):
                for job_id in job_ids:
                    app.send_task(
                        TaskName.SEGMENT_SERIES.value,
                        kwargs={"job_id": job_id},
                        queue=QueueName.SEGMENT.value,
                        producer=producer,
                        retry=True,
                        retry_policy=RETRY_POLICY,
                    )
        except self._send_errors as error:
            self._down_until = time.monotonic() + BACKOFF_S
            if not self._down_logged:
                logger.warning(
                    "broker_unreachable jobs=%d stay=received error=%s", len(job_ids), error
                )
                self._down_logged = True
            self._metrics.jobs.labels("enqueue_failed").inc(len(job_ids))
            return []
        if self._down_logged:
            logger.info("broker_reachable_again")
            self._down_logged = False
        return list(job_ids)


class Enqueuer:
    """Sends ``segment_series`` for job ids and marks the jobs ``queued``."""

    def __init__(
        self,
        settings: Settings,
        session_factory: Sessions,
        metrics: ListenerMetrics,
    ) -> None:
        self._session_factory = session_factory
        self._metrics = metrics
        self.sender = TaskSender(settings, metrics)
        if settings.broker_url is None:
            logger.warning(
                "no_broker: BONESCAN_BROKER_URL is not set; jobs stay 'received' in the database "
                "until a broker is configured (the embedded broker is not part of `listen`)"
            )

    def warm_up(self) -> None:
        self.sender.warm_up()

    @property
    def available(self) -> bool:
        return self.sender.available

    def resend(self, task: TaskName, queue: QueueName, **kwargs: int) -> bool:
        return self.sender.resend(task, queue, **kwargs)

    def enqueue(self, job_id: int) -> bool:
        """Send the job's task; True once the broker has it and the job is ``queued``."""
        return bool(self.enqueue_many([job_id]))

    def enqueue_many(self, job_ids: list[int]) -> list[int]:
        """Send each job's task, then mark those the broker took ``queued`` in one transaction;
        returns their ids (the rest stay ``received`` for the sweeper)."""
        sent = self.sender.send(job_ids)
        self.mark_queued(sent)
        return sent

    def mark_queued(self, sent: list[int]) -> None:
        """Record that the broker took these jobs: ``received → queued``, one transaction."""
        if not sent:
            return
        self._metrics.jobs.labels("enqueued").inc(len(sent))
        try:
            with self._session_factory.transaction() as connection:
                filing.mark_queued(connection, sent, f"sent {TaskName.SEGMENT_SERIES.value}")
        except SQLAlchemyError as error:
            # The tasks are in the broker; the worker accepts a job still 'received'.
            logger.warning("jobs_not_marked_queued jobs=%s error=%s", sent, error)
        for job_id in sent:
            logger.info("job_enqueued job=%d task=%s", job_id, TaskName.SEGMENT_SERIES.value)
