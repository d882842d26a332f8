"""``bonescan worker``: a Celery worker running the segment and/or export tasks.

The pool forks first; each child loads the model on its first task (FACTS.md: nothing touches
the model or CUDA before fork). ``--queues segment`` on GPU hosts and ``--queues export`` on
small ones split the heavy and the network-bound work; the default runs both.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from pipeline.cli.common import fail, first_line, settings_or_exit
from pipeline.tasks.names import QueueName


def _queues(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {queue.value for queue in QueueName}
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        fail(f"--queues must name some of {', '.join(sorted(known))}; got {text!r}")
    return names


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume: segment, export.")
    ] = "segment,export",
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Pool processes (default: BONESCAN_WORKER__CONCURRENCY)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Worker node name (default: bonescan-<pid>@<host>).")
    ] = None,
) -> None:
    """Run a Celery worker for the bonescan tasks (stop it with Ctrl-C or SIGTERM)."""
    settings = settings_or_exit()
    selected = _queues(queues)
    if settings.broker_url is None:
        fail(
            "BONESCAN_BROKER_URL is not set: a worker needs a broker "
            "(e.g. redis://127.0.0.1:6379/0); `bonescan serve` runs without one"
        )
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from pipeline.db.migrate import current_revision, head_revision  # noqa: PLC0415

    try:
        current = current_revision(settings.database_url)
    except SQLAlchemyError as error:
        fail(f"database unreachable: {first_line(error)}")
    if current != head_revision():
        fail(
            f"the database schema is at {current or 'nothing'}, this bonescan needs "
            f"{head_revision()}: run `bonescan db upgrade`"
        )
    if concurrency is not None:
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"concurrency": concurrency})}
        )
    if settings.worker.metrics_port is not None:
        from pipeline.tasks.metrics import prepare_multiprocess, serve_multiprocess  # noqa: PLC0415

        prepare_multiprocess(settings.data_dir / "metrics" / f"worker-{os.getpid()}")
        serve_multiprocess(settings.listener.host, settings.worker.metrics_port)
    from pipeline.tasks.app import make_worker_app  # noqa: PLC0415

    app = make_worker_app(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(selected),
            "--concurrency",
            str(settings.worker.concurrency),
            "--pool",
            "prefork",
            "--hostname",
            name or f"bonescan-{os.getpid()}@%h",
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
            "--optimization",
            "fair",
        ]
    )
