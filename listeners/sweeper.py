"""The listener's one background thread: opens jobs for arrivals, enqueues, and sweeps.

- An :class:`~listeners.handlers.Arrival` from the C-STORE handler is checked at once: a
  complete series opens a job, which is enqueued after its commit.
- Every ``interval_s`` it sweeps: series without a job that are complete or quiet for
  ``quiet_seconds`` get one; jobs still ``received`` (the broker was down) are enqueued.
- At start-up it recovers: spooled files that have no row (the process died between rename and
  commit) are filed, so their series can complete (the listener removed partial files before
  it opened its port).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from listeners.completeness import SeriesJobs
from listeners.database import Sessions
from listeners.enqueue import Enqueuer
from listeners.handlers import Arrival, record, take_batch
from listeners.metrics import ListenerMetrics
from listeners.receive import UnreadableDatasetError, parse
from listeners.sender import SenderProcess
from listeners.spool import Spool, Stored
from pipeline.db import ingest
from pipeline.db.jobs import due_exports, stalled_job_ids
from pipeline.db.models import Job
from pipeline.db.types import utcnow
from pipeline.tasks.names import QueueName, TaskName

logger = logging.getLogger(__name__)

ARRIVAL_BATCH = 64  # arrivals checked in one transaction at most
ENQUEUE_GRACE_S = 1.0  # a job younger than this is still on its way through the arrival path
# The sender process's reports are marked ``queued`` this long after the first of them came,
# all in one transaction: a transaction per scan took the interpreter and SQLite's write lock
# from the associations (~1 ms a scan) for a state a worker does not wait for.
MARK_DELAY_S = 0.2
MARK_BATCH = 512  # reports holding this many job ids are marked at once
# Lost-message safety net: how often to look, and how overdue an export must be to be resent.
RESEND_EVERY_S = 30.0
EXPORT_OVERDUE_S = 120.0
RECOVERED_CALLING_AE = "UNKNOWN"


@dataclass(frozen=True)
class _Sent:
    """A report of the sender process: the jobs whose task the broker took, and how many of
    its batch it could not send (those stay ``received``; the sweep sends them)."""

    job_ids: list[int]
    unsent: int


class Sweeper(threading.Thread):
    """See the module docstring. ``stop()`` ends the loop after the current step."""

    def __init__(
        self,
        spool: Spool,
        session_factory: Sessions,
        jobs: SeriesJobs,
        enqueuer: Enqueuer,
        metrics: ListenerMetrics,
        *,
        called_ae_title: str,
        quiet_seconds: float,
        interval_s: float = 1.0,
        visibility_timeout_s: float = 3600.0,
    ) -> None:
        super().__init__(name="bonescan-sweeper", daemon=True)
        self.spool = spool
        self.session_factory = session_factory
        self.jobs = jobs
        self.enqueuer = enqueuer
        self.metrics = metrics
        self.called_ae_title = called_ae_title
        self.quiet_seconds = quiet_seconds
        self.interval_s = interval_s
        self.visibility_timeout_s = visibility_timeout_s
        self._next_resend = time.monotonic() + RESEND_EVERY_S
        self._arrivals: queue.Queue[Arrival | int | _Sent] = queue.Queue()
        self._to_mark: list[int] = []  # sent by the sender process, not yet marked queued
        self._mark_due: float | None = None
        self.sender: SenderProcess | None = None  # started again by the sweep if it died
        self._stopping = threading.Event()
        self._recovered = False
        # Files from before this moment belong to an earlier run; newer ones may be
        # in flight in this one (written, not yet committed) and are not the recovery's business.
        self._started_wall = time.time()

    def notify(self, arrival: Arrival) -> None:
        """Queue an arrival for a completeness check (called from handler threads)."""
        self._arrivals.put(arrival)

    def opened(self, job_id: int) -> None:
        """Queue a job opened (and committed) with its last instance, to be enqueued."""
        self._arrivals.put(job_id)

    def sent(self, job_ids: list[int], unsent: int) -> None:
        """Queue a sender process's report: these jobs are to be marked ``queued``."""
        self._arrivals.put(_Sent(job_ids, unsent))

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        next_sweep = time.monotonic()
        while not self._stopping.is_set():
            wake = next_sweep if self._mark_due is None else min(next_sweep, self._mark_due)
            try:
                arrival = self._arrivals.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                arrival = None
            if arrival is not None:  # with what came meanwhile: one transaction
                self._guarded(self.on_arrivals, take_batch(self._arrivals, arrival, ARRIVAL_BATCH))
            if self._mark_due is not None and time.monotonic() >= self._mark_due:
                self._guarded(self.mark_sent)
            if time.monotonic() >= next_sweep:
                self._guarded(self.sweep)
                next_sweep = time.monotonic() + self.interval_s
        while True:  # the sender's last reports (it is stopped first); the rest waits for a sweep
            try:
                arrival = self._arrivals.get_nowait()
            except queue.Empty:
                break
            if isinstance(arrival, _Sent):
                self._to_mark.extend(arrival.job_ids)
        self._guarded(self.mark_sent)

    def mark_sent(self) -> None:
        """Mark ``queued`` the jobs the sender process reported sent (one transaction)."""
        job_ids, self._to_mark, self._mark_due = self._to_mark, [], None
        self.enqueuer.mark_queued(job_ids)

    def _guarded(self, step: object, *args: object) -> None:
        try:
            step(*args)  # type: ignore[operator]
        except SQLAlchemyError as error:
            logger.warning("sweeper_database_error error=%s", str(error).splitlines()[0][:300])
        except Exception:  # the thread must outlive any one bad step; it is logged in full
            logger.exception("sweeper_step_failed")

    def _open_and_enqueue(self, open_job: object, *args: object) -> None:
        try:
            with self.session_factory.begin() as session:
                job: Job | None = open_job(session, *args)  # type: ignore[operator]
                job_id = job.id if job is not None else None
        except IntegrityError:
            return  # another opener committed the same idempotency key first
        if job_id is not None:
            self.metrics.jobs.labels("opened").inc()
            self.enqueuer.enqueue(job_id)

    def on_arrivals(self, arrivals: list[Arrival | int | _Sent]) -> None:
        """Collect the jobs the sender process sent (marked ``queued`` by :meth:`mark_sent`
        within :data:`MARK_DELAY_S`), enqueue the jobs opened with their instance (ints), and
        open and enqueue the jobs the other arrivals complete, all checks in one transaction.

        Under load (many associations) arrivals queue up while the previous batch commits, so
        one commit serves many. A concurrent opener's IntegrityError sends the batch through one
        transaction each, so it costs only that arrival's job (the sweep opens it if still due).
        """
        reports = [a for a in arrivals if isinstance(a, _Sent)]
        if reports:
            self._to_mark.extend(job_id for r in reports for job_id in r.job_ids)
            if self._mark_due is None:
                self._mark_due = time.monotonic() + MARK_DELAY_S
            if len(self._to_mark) >= MARK_BATCH:
                self.mark_sent()
            failed = sum(1 for r in reports if r.unsent)
            if failed:
                self.metrics.jobs.labels("enqueue_failed").inc(failed)
        job_ids = [a for a in arrivals if isinstance(a, int)]
        checks = [a for a in arrivals if isinstance(a, Arrival)]
        if checks:
            try:
                opened = self._open_for(checks)
            except IntegrityError:
                opened = []
                for arrival in checks:
                    try:
                        opened += self._open_for([arrival])
                    except IntegrityError:
                        continue  # another opener committed the same idempotency key first
            self.metrics.jobs.labels("opened").inc(len(opened))
            job_ids += opened
        if job_ids:
            self.enqueuer.enqueue_many(job_ids)

    def _open_for(self, arrivals: list[Arrival]) -> list[int]:
        with self.session_factory.begin() as session:
            jobs = [
                self.jobs.on_arrival(session, a.series_id, a.sop_instance_uid, a.view)
                for a in arrivals
            ]
            return [job.id for job in jobs if job is not None]

    def sweep(self) -> None:
        """Recover once, then open jobs for complete or quiet series and enqueue pending jobs."""
        if not self._recovered:
            self.recover()
            self._recovered = True
        if self.sender is not None:
            self.sender.ensure_running()
        now = utcnow()
        with self.session_factory() as session:
            waiting = set(ingest.quiet_series_without_job(session, now - timedelta(seconds=1)))
            quiet = set(
                ingest.quiet_series_without_job(
                    session, now - timedelta(seconds=self.quiet_seconds)
                )
            )
        for series_id in sorted(waiting):
            self._open_and_enqueue(self._on_sweep, series_id, series_id in quiet)
        if self.enqueuer.available:
            with self.session_factory() as session:
                pending = ingest.pending_job_ids(session, now - timedelta(seconds=ENQUEUE_GRACE_S))
            # not those the sender process has, or sent and this thread has yet to mark
            on_their_way = set(self._to_mark)
            if self.sender is not None:
                on_their_way |= self.sender.in_flight()
            self.enqueuer.enqueue_many([job_id for job_id in pending if job_id not in on_their_way])
        if self.enqueuer.available and time.monotonic() >= self._next_resend:
            self._next_resend = time.monotonic() + RESEND_EVERY_S
            self.resend_lost(now)

    def resend_lost(self, now: datetime) -> None:
        """Resend tasks whose message may be lost: jobs queued for longer than the visibility
        timeout or running on an expired lease, and exports overdue for their next attempt."""
        with self.session_factory() as session:
            jobs = stalled_job_ids(
                session, now, now - timedelta(seconds=self.visibility_timeout_s + EXPORT_OVERDUE_S)
            )
            exports = due_exports(session, now - timedelta(seconds=EXPORT_OVERDUE_S))
        for job_id in jobs:
            self.enqueuer.resend(TaskName.SEGMENT_SERIES, QueueName.SEGMENT, job_id=job_id)
        for export_id in exports:
            self.enqueuer.resend(TaskName.EXPORT_RESULT, QueueName.EXPORT, export_id=export_id)

    def _on_sweep(self, session: Session, series_id: int, quiet: bool) -> Job | None:
        return self.jobs.on_sweep(session, series_id, quiet=quiet)

    def recover(self) -> None:
        """File spooled instances of earlier runs that have no row.

        It runs while associations are already being served (the port opens first), so it only
        touches files older than this sweeper: a newer file without a row is between its rename
        and its commit. (Partial files of earlier runs were removed before the port opened:
        :meth:`listeners.app.Listener.start`.)
        """
        files = [str(path) for path in self.spool.files() if self._before_start(path)]
        with self.session_factory() as session:
            known = ingest.spooled_paths(session, files)
        orphans = [Path(path) for path in files if path not in known]
        for path in orphans:
            self._recover_file(path)
        if orphans:
            logger.warning("spool_orphans_recovered count=%d", len(orphans))

    def _before_start(self, path: Path) -> bool:
        try:
            return path.stat().st_mtime < self._started_wall
        except FileNotFoundError:
            return False

    def _recover_file(self, path: Path) -> None:
        data = path.read_bytes()
        try:
            parsed = parse(data)
        except UnreadableDatasetError as error:
            logger.error("spool_orphan_unreadable path=%s error=%s", path, error)
            return
        stored = Stored(path, len(data), hashlib.sha256(data).hexdigest())
        recorded = record(
            self.session_factory,
            parsed,
            stored,
            calling_ae_title=parsed.calling_ae_title or RECOVERED_CALLING_AE,
            called_ae_title=self.called_ae_title,
            model_version=self.jobs.model_version,
        )
        if recorded.instance_id is not None and parsed.classification.is_work:
            self.notify(
                Arrival(recorded.series_id, parsed.sop_instance_uid, parsed.classification.view)
            )
