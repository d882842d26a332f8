"""Several association processes on one port (``listener.processes`` > 1).

One Python process files C-STOREs on one core at a time (the interpreter lock): with many
associations at once it is the limit, not the disk or the database. With ``processes`` = N the
listener process binds the port and starts N association processes (spawned, not forked: the
parent already runs threads) that accept on that one socket, each with its own handlers, record
writer and database connections, exactly as the single-process listener files an instance.
What must stay single stays in the parent: the sweeper, the sender process, the metrics
endpoint, and the count of associations (``max_associations`` holds for all processes
together, in shared memory).

Each association process reports to the parent over a pipe: the jobs its C-STOREs open (the
parent's sender enqueues them), the single views that may complete a pair (the sweeper checks),
and its metrics (counter increments and handler latencies, twice a second). An association
process that dies is started again; the slots it held and the partial files it left are freed.
One that finds its parent gone stops at once, aborting its associations, as the listener it
belonged to did.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from types import FrameType
from typing import Any

from listeners.handlers import Arrival, ArrivalSink
from listeners.metrics import ListenerMetrics
from listeners.spool import Spool
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0  # a spawned process imports pydicom, pynetdicom, SQLAlchemy: seconds
RELAY_INTERVAL_S = 0.5
RESTART_DELAY_S = 1.0  # between a process's death and its replacement (no tight crash loop)
COUNTERS = ("associations", "instances", "bytes", "skipped", "jobs")  # ListenerMetrics fields


class WorkerSlots:
    """One association process's view of the shared association count (:class:`~listeners.scp.
    Slots`): a slot is counted against the process that took it, so the slots of a process that
    dies can be freed."""

    def __init__(self, counts: SynchronizedArray[int], index: int) -> None:
        self.counts = counts
        self.index = index

    def take(self, limit: int) -> bool:
        with self.counts.get_lock():
            if sum(self.counts[:]) >= limit:
                return False
            self.counts[self.index] += 1
            return True

    def give_back(self) -> None:
        with self.counts.get_lock():
            self.counts[self.index] = max(0, self.counts[self.index] - 1)

    def total(self) -> int:
        return sum(self.counts[:])

    def free_all(self) -> None:
        with self.counts.get_lock():
            self.counts[self.index] = 0


class RelayedMetrics(ListenerMetrics):
    """An association process's metrics: counted here, sent to the parent by :func:`relay`."""

    def __init__(self) -> None:
        super().__init__()
        self._latencies: list[float] = []
        self._sent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()

    def observe_store(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)

    def increments(self) -> tuple[list[tuple[str, dict[str, str], float]], list[float]]:
        """What was counted since the last call: counter increments and handler latencies."""
        deltas = []
        for name in COUNTERS:
            for family in getattr(self, name).collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    key = (name, tuple(sorted(sample.labels.items())))
                    delta = sample.value - self._sent.get(key, 0.0)
                    if delta:
                        self._sent[key] = sample.value
                        deltas.append((name, dict(sample.labels), delta))
        with self._lock:
            latencies, self._latencies = self._latencies, []
        return deltas, latencies


def apply_increments(
    metrics: ListenerMetrics,
    deltas: list[tuple[str, dict[str, str], float]],
    latencies: list[float],
) -> None:
    """Add an association process's increments to the parent's metrics."""
    for name, labels, delta in deltas:
        if name not in COUNTERS:
            continue
        counter = getattr(metrics, name)
        (counter.labels(**labels) if labels else counter).inc(delta)
    for seconds in latencies:
        metrics.observe_store(seconds)


class _Link:
    """The association process's end of its pipe (sends from several threads)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> bool:
        try:
            with self._lock:
                self.connection.send(message)
        except (OSError, ValueError):  # the parent is gone: serving stops (serve_associations)
            return False
        return True


class _LinkedArrivals:
    """:class:`~listeners.handlers.ArrivalSink` of an association process: to the parent."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def notify(self, arrival: Arrival) -> None:
        self.link.send(("notify", arrival))

    def opened(self, job_id: int) -> None:
        self.link.send(("opened", job_id))


def serve_associations(
    settings: Settings,
    sock: socket.socket,
    connection: Connection,
    counts: SynchronizedArray[int],
    index: int,
) -> None:
    """An association process: serve ``sock`` until SIGTERM or the parent's end."""
    # Spawned: everything is imported and built here, in the new interpreter.
    from listeners.app import (  # noqa: PLC0415
        build_ae,
        listener_engine,
        quiet_pynetdicom,
        ssl_context,
    )
    from listeners.database import ListenerSessions  # noqa: PLC0415
    from listeners.handlers import RecordWriter, StoreHandlers  # noqa: PLC0415
    from listeners.scp import StoreServer  # noqa: PLC0415
    from pipeline.logs import configure_logging  # noqa: PLC0415
    from pipeline.model_version import current_model_version  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_format)
    quiet_pynetdicom()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us with SIGTERM
    parent = os.getppid()
    listener = settings.listener
    engine = listener_engine(settings)
    sessions = ListenerSessions(engine)
    link = _Link(connection)
    metrics = RelayedMetrics()
    spool = Spool(settings.spool_dir, reserve=1)  # one file made ahead (Spool)
    slots = WorkerSlots(counts, index)
    handlers = StoreHandlers(
        spool,
        sessions,
        _LinkedArrivals(link),
        metrics,
        writer=RecordWriter(sessions, current_model_version(settings)),
    )
    server = StoreServer(
        build_ae(listener),
        handlers,
        (listener.host, listener.port),
        ssl_context=ssl_context(listener),
        sock=sock,
        slots=slots,
    )
    handlers.associations = slots.total
    orphaned = threading.Event()
    threading.Thread(
        target=_watch_parent, args=(connection, orphaned, stop), name="parent-watch", daemon=True
    ).start()
    server.start()
    link.send(("ready", os.getpid()))
    while not stop.wait(RELAY_INTERVAL_S):
        deltas, latencies = metrics.increments()
        if (deltas or latencies) and not link.send(("metrics", deltas, latencies)):
            orphaned.set()
            break
    if orphaned.is_set() or os.getppid() != parent:
        # the listener was killed: so is what this process served (the modality sends again;
        # the listener clears partial files when it starts), and the port is let go at once
        logger.error("association_process_orphaned index=%d: stopping", index)
        server.shutdown(0.0)
        spool.close()
        return
    aborted = server.shutdown(listener.shutdown_grace_seconds)
    spool.close()
    link.send(("metrics", *metrics.increments()))
    link.send(("stopped", aborted))
    engine.dispose()
    connection.close()


def _watch_parent(connection: Connection, orphaned: threading.Event, stop: threading.Event) -> None:
    """The parent never writes to the pipe: its end closing means the parent is gone."""
    with contextlib.suppress(EOFError, OSError):
        connection.recv()
    orphaned.set()
    stop.set()


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: multiprocessing.process.BaseProcess | None = None
        self.ready = threading.Event()
        self.aborted = 0


class AssociationProcesses:
    """The parent's side: bind the port, run ``count`` association processes, relay their
    reports to ``arrivals`` and ``metrics``, restart one that dies, stop them on request."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        arrivals: ArrivalSink,
        metrics: ListenerMetrics,
    ) -> None:
        self.settings = settings
        self.arrivals = arrivals
        self.metrics = metrics
        self._context = multiprocessing.get_context("spawn")
        self.counts: SynchronizedArray[int] = self._context.Array("i", count)
        self.workers = [_Worker(index) for index in range(count)]
        self.sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        """Bind the port, start every process and wait until each serves (raises
        ``RuntimeError`` when one does not come up, ``OSError`` when the port is taken)."""
        listener = self.settings.listener
        self.sock = socket.create_server(
            (listener.host, listener.port), backlog=128, reuse_port=False
        )
        for worker in self.workers:
            self._spawn(worker)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for worker in self.workers:
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                self.stop(0.0)
                raise RuntimeError(f"association process {worker.index} did not start")

    def _spawn(self, worker: _Worker) -> None:
        ours, theirs = self._context.Pipe()  # duplex: its closing tells the child we are gone
        process = self._context.Process(
            target=serve_associations,
            args=(self.settings, self.sock, theirs, self.counts, worker.index),
            name=f"bonescan-associations-{worker.index}",
            daemon=False,
        )
        process.start()
        theirs.close()
        worker.process = process
        reader = threading.Thread(
            target=self._read, args=(worker, ours), name=f"associations-{worker.index}-reports"
        )
        reader.daemon = True
        reader.start()
        self._readers.append(reader)

    def _read(self, worker: _Worker, connection: Connection) -> None:
        handlers: dict[str, Callable[..., None]] = {
            "notify": self.arrivals.notify,
            "opened": self.arrivals.opened,
            "metrics": lambda deltas, latencies: apply_increments(self.metrics, deltas, latencies),
        }
        while True:
            try:
                kind, *args = connection.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                logger.info("association_process_ready index=%d pid=%d", worker.index, args[0])
                worker.ready.set()
            elif kind == "stopped":
                worker.aborted = int(args[0])
            else:
                try:
                    handlers[kind](*args)
                except Exception:  # a report must not end the reading of the others
                    logger.exception("association_process_report_failed kind=%s", kind)
        connection.close()
        WorkerSlots(self.counts, worker.index).free_all()
        process = worker.process
        if process is not None:
            process.join(timeout=None if self._stopping.is_set() else 5)
            if process.exitcode is not None and process.pid is not None:
                Spool(self.settings.spool_dir).remove_partials(pid=process.pid)
        if self._stopping.is_set():
            return
        logger.error(
            "association_process_exited index=%d exitcode=%s: starting another",
            worker.index,
            None if process is None else process.exitcode,
        )
        time.sleep(RESTART_DELAY_S)
        if not self._stopping.is_set():
            worker.ready.clear()
            self._spawn(worker)

    def stop(self, grace_s: float) -> int:
        """SIGTERM to every process (each stops accepting and lets its associations finish
        within ``grace_s``), wait for them, close the port; the number of aborted
        associations."""
        self._stopping.set()
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is None:
                continue
            worker.process.join(timeout=grace_s + 10)
            if worker.process.is_alive():
                logger.error("association_process_stuck index=%d: killed", worker.index)
                worker.process.kill()
                worker.process.join(timeout=5)
        for reader in self._readers:
            reader.join(timeout=5)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        return sum(worker.aborted for worker in self.workers)
