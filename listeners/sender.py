"""The sender process: the tasks of opened jobs are sent to the broker from a child process.

Celery's ``send_task`` costs about 0.5 ms of Python per task (bench: ``send_task`` to Redis on
the benchmark's VM), and in the listener's process that time is taken from the associations:
they share one interpreter lock. With the broker URL set, the listener starts this child
(``spawn``) before it opens its port and hands it the id of each job opened by a C-STORE over a
pipe (a non-blocking write of a few bytes). The child sends the tasks of the ids that arrive
within :data:`GATHER_S` in one pipelined publish and reports back which ids the broker took;
the listener's sweeper marks those ``queued``, many per transaction.

Nothing depends on the child for safety: a job whose id does not reach it (pipe full, child
dead) goes to the sweeper's own :class:`~listeners.enqueue.Enqueuer` instead, and a job whose
task the child could not send stays ``received`` until the sweeper sends it. A child that died
is started again by the sweeper's next sweep. The child holds no database connection.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from listeners.enqueue import TaskSender
from listeners.metrics import ListenerMetrics
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

JOB_ID = struct.Struct("<q")
BATCH = 256  # ids sent before a report at most
# After the first id, the ids that come within this long go in the same batch: one pipelined
# publish costs ~0.55 ms of Python for 1 task, ~0.33 ms per task for 4 (TaskSender.send); a job
# starts at most this much later.
GATHER_S = 0.02
RESTART_EVERY_S = 10.0  # a child that keeps dying is started again at most this often
# A job handed to the child and not reported on within this long is the sweep's again (a child
# that hangs on a broker must not keep its jobs from being sent)
IN_FLIGHT_S = 30.0
STOP_TIMEOUT_S = 10.0

# the ids the broker took, and those it did not (it failed)
Report = tuple[list[int], list[int]]


def run_sender(settings: Settings, jobs: Connection, reports: Connection) -> None:
    """The child's loop: read job ids, send their tasks, report; ends when the pipe closes."""
    from pipeline.logs import configure_logging  # noqa: PLC0415 (in the child only)

    configure_logging(settings.log_level, settings.log_format)
    # The listener stops the child by closing the pipe, after its associations have ended;
    # a signal meant for the listener (a terminal's Ctrl-C, a process group's SIGTERM) must
    # not end the child first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sender = TaskSender(settings, ListenerMetrics())  # counted by the listener, from reports
    sender.warm_up()
    while True:
        try:
            ids = [JOB_ID.unpack(jobs.recv_bytes())[0]]
            gather_until = time.monotonic() + GATHER_S
            while len(ids) < BATCH and jobs.poll(max(0.0, gather_until - time.monotonic())):
                ids.append(JOB_ID.unpack(jobs.recv_bytes())[0])
        except (EOFError, OSError):
            return
        sent = sender.send(ids)
        taken = set(sent)
        try:
            reports.send((sent, [job_id for job_id in ids if job_id not in taken]))
        except OSError:
            return


class SenderProcess:
    """The listener's side of the sender process: start, hand over job ids, read reports.

    ``on_report(sent_ids, unsent)`` is called on a reader thread for every batch the child
    handled. :meth:`in_flight` tells the sweeper which jobs the child has and has not reported
    yet, so that it does not send them a second time.
    """

    def __init__(self, settings: Settings, on_report: Callable[[list[int], int], None]) -> None:
        self._settings = settings
        self._on_report = on_report
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._jobs: Connection | None = None
        self._next_start = 0.0
        self._stopping = False
        self._in_flight: dict[int, float] = {}  # handed to the child, not yet reported: when

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the child (it loads Celery before the listener opens its port)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        jobs_in, jobs_out = self._context.Pipe(duplex=False)
        reports_in, reports_out = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_sender,
            args=(self._settings, jobs_in, reports_out),
            name="bonescan-sender",
            daemon=True,
        )
        process.start()
        self._in_flight.clear()  # a dead child's jobs are the sweep's again
        jobs_in.close()  # the child's ends: this process keeps only its own
        reports_out.close()
        os.set_blocking(jobs_out.fileno(), False)  # a full pipe must not hold an association
        self._process, self._jobs = process, jobs_out
        self._next_start = time.monotonic() + RESTART_EVERY_S
        threading.Thread(
            target=self._read_reports, args=(reports_in,), name="bonescan-sender-reports",
            daemon=True,
        ).start()  # fmt: skip
        logger.info("sender_started pid=%s", process.pid)

    def _read_reports(self, reports: Connection) -> None:
        while True:
            try:
                sent, unsent = reports.recv()
            except (EOFError, OSError):
                reports.close()
                return
            try:
                self._on_report(sent, len(unsent))
            except Exception:  # the reader must outlive a bug in one report's handling
                logger.exception("sender_report_failed")
            with self._lock:
                for job_id in (*sent, *unsent):
                    self._in_flight.pop(job_id, None)

    def in_flight(self) -> set[int]:
        """The jobs handed to a running child that it has not reported on yet, for at most
        :data:`IN_FLIGHT_S` (older ones are forgotten: the sweep sends them)."""
        with self._lock:
            if self._process is None or not self._process.is_alive():
                return set()
            since = time.monotonic() - IN_FLIGHT_S
            for job_id in [j for j, handed in self._in_flight.items() if handed < since]:
                del self._in_flight[job_id]
            return set(self._in_flight)

    def submit(self, job_id: int) -> bool:
        """Hand a committed job's id to the child; False when it cannot take it now."""
        with self._lock:
            jobs = self._jobs
            if jobs is None:
                return False
            try:
                jobs.send_bytes(JOB_ID.pack(job_id))  # one write of 12 bytes: all or nothing
            except (OSError, ValueError):  # full (BlockingIOError), child gone (BrokenPipe)
                return False
            self._in_flight[job_id] = time.monotonic()
        return True

    def ensure_running(self) -> None:
        """Start the child again if it died (at most every :data:`RESTART_EVERY_S`)."""
        with self._lock:
            process = self._process
            if self._stopping or process is None or process.is_alive():
                return
            if time.monotonic() < self._next_start:
                return
            logger.warning("sender_restarting exitcode=%s", process.exitcode)
            if self._jobs is not None:
                self._jobs.close()
            self._jobs = None
            self._start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Close the pipe (the child sends what it has and exits) and wait for it."""
        with self._lock:
            self._stopping = True
            jobs, self._jobs = self._jobs, None
            process = self._process
        if jobs is not None:
            jobs.close()
        if process is not None:
            process.join(timeout_s)
            if process.is_alive():
                process.kill()
                process.join(1.0)
