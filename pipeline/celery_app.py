"""The Celery application object, broker only, built from the settings by :func:`make_celery`.

Producers (the listener) and workers share this factory. There is no result backend: tasks
record their outcome in the tracking database, and FACTS.md saw a process with the Redis result
backend hang at exit once Redis was gone.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from pipeline import broker as _embedded_broker  # noqa: F401 - registers bonescan-sqlite
from pipeline.settings import Settings
from pipeline.tasks.names import QueueName

# FACTS.md: without this a killed worker's task comes back only after ~100 s.
UNACKED_RESTORE_INTERVAL_S = 10
# A producer must not hold a DICOM association while the broker is down (DESIGN.md rules).
BROKER_CONNECT_TIMEOUT_S = 2.0


def make_celery(settings: Settings, *, name: str = "bonescan") -> Celery:
    """A Celery app on ``settings.broker_url`` with bonescan's queues and delivery guarantees.

    Raises
    ------
    ValueError
        If ``settings.broker_url`` is not set (the embedded broker is started elsewhere).
    """
    if settings.broker_url is None:
        raise ValueError("BONESCAN_BROKER_URL is not set: no broker to build a Celery app on")
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # One direct exchange per queue, routing key = queue name: a bare Queue("export") binds
        # to the default exchange with the default key and would get the segment messages too.
        task_queues=[
            Queue(q.value, Exchange(q.value, type="direct"), routing_key=q.value)  # type: ignore[no-untyped-call]
            for q in QueueName
        ],
        task_default_exchange=QueueName.SEGMENT.value,
        task_default_routing_key=QueueName.SEGMENT.value,
        task_default_queue=QueueName.SEGMENT.value,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.worker.visibility_timeout_seconds,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            # kombu scans only every interval × throttle (default 10): make it every interval.
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_timeout": BROKER_CONNECT_TIMEOUT_S,
        },
        enable_utc=True,
    )
    return app
