"""``bonescan serve``: the listener (with its sweeper) and a worker on one host, supervised.

With ``BONESCAN_BROKER_URL`` unset it runs on embedded defaults: SQLite in the data dir (the
default database) and kombu's SQLAlchemy transport over a second SQLite file in the data dir as
the broker (:mod:`pipeline.broker`), so a newcomer needs no server. The worker
is the same ``bonescan worker`` (a real Celery worker, the same tasks) as in production; with
Redis and PostgreSQL configured, ``serve`` uses them.

The children run in their own sessions and die with ``serve`` (``PR_SET_PDEATHSIG``). Ctrl-C or
SIGTERM stops the listener first (it finishes the associations in flight), then the worker (a
warm shutdown: the task in hand finishes, an unacked one is redelivered). A child that exits on
its own is restarted after a short pause; one that keeps exiting stops ``serve`` with exit code 1.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Annotated

import typer

from pipeline.broker import embedded_broker_url
from pipeline.cli.common import display_url, fail, first_line, settings_or_exit
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_TIMEOUT_S = 60.0
RESTART_PAUSE_S = 2.0
MAX_RESTARTS = 5  # per child, within RESTART_WINDOW_S
RESTART_WINDOW_S = 300.0


def _die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when ``serve`` dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process: what to run, the running process, and its recent restarts."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - serve starts no threads
        )
        logger.info("serve_started child=%s pid=%d", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("serve_kill child=%s after=%ss", self.name, timeout)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        logger.info("serve_stopped child=%s code=%s", self.name, self.process.returncode)


class _StopRequestedError(Exception):
    """Raised from the signal handler to leave the supervision loop."""


def _prepare_database(settings: Settings) -> None:
    """Embedded SQLite is upgraded in place; any other database must already be at head."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from pipeline.db.migrate import current_revision, head_revision, upgrade  # noqa: PLC0415

    try:
        if settings.database_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            upgrade(settings.database_url)
            return
        current = current_revision(settings.database_url)
    except SQLAlchemyError as error:
        fail(f"database unreachable: {first_line(error)}")
    if current != head_revision():
        fail(
            f"the database schema is at {current or 'nothing'}, this bonescan needs "
            f"{head_revision()}: run `bonescan db upgrade`"
        )


def serve(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Worker pool processes (default: BONESCAN_WORKER__CONCURRENCY)."),
    ] = None,
) -> None:
    """Run the listener and a worker on this host until Ctrl-C (embedded broker by default)."""
    settings = settings_or_exit()
    _prepare_database(settings)
    env = dict(os.environ)
    broker = settings.broker_url
    if broker is None:
        broker = embedded_broker_url(settings.data_dir)
        env["BONESCAN_BROKER_URL"] = broker
    # Children read the same settings; pin the resolved paths so a changed cwd cannot move them.
    env["BONESCAN_DATA_DIR"] = str(settings.data_dir.resolve())
    env["BONESCAN_DATABASE_URL"] = settings.database_url
    worker_argv = [sys.executable, "-m", "pipeline.cli", "worker"]
    if concurrency is not None:
        worker_argv += ["--concurrency", str(concurrency)]
    children = [
        Child("listener", [sys.executable, "-m", "listeners"]),
        Child("worker", worker_argv),
    ]
    if settings.review_password_hash is not None:  # the review page only ever behind a login
        children.append(Child("review", [sys.executable, "-m", "pipeline.cli", "review-server"]))
    typer.echo(
        f"bonescan serve: {settings.listener.ae_title} on {settings.listener.host}:"
        f"{settings.listener.port}, database {display_url(settings.database_url)}, broker "
        f"{display_url(broker)}{' (embedded)' if settings.broker_url is None else ''}; "
        "Ctrl-C stops"
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _StopRequestedError(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for child in children:
            child.start(env)
        code = _supervise(children, env)
    except _StopRequestedError as stop:
        logger.info("serve_stopping signal=%s", stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGINT else handler)
        for child in children:  # listener first: no new scans, then the worker finishes its task
            child.stop(STOP_TIMEOUT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        raise typer.Exit(code)
    typer.echo("bonescan serve: stopped")


def _supervise(children: list[Child], env: dict[str, str]) -> int:
    """Restart children that exit; return 1 when one keeps exiting."""
    while True:
        time.sleep(0.5)
        for child in children:
            if child.alive():
                continue
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
            code = child.process.returncode if child.process is not None else None
            if len(child.restarts) >= MAX_RESTARTS:
                typer.echo(
                    f"error: the {child.name} exited {len(child.restarts) + 1} times within "
                    f"{RESTART_WINDOW_S:.0f} s (last exit code {code}); see its log above",
                    err=True,
                )
                return 1
            logger.warning("serve_restart child=%s code=%s", child.name, code)
            time.sleep(RESTART_PAUSE_S)
            child.restarts.append(now)
            child.start(env)
