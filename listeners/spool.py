"""The spool: received instances on disk, exactly as they arrived, written atomically.

A file is visible under its final name only once it is complete and on disk: bytes go, as they
arrive, to a hidden temporary file in ``<root>/.incoming``, which is fsynced, renamed to the
final name and the final folder fsynced (so the rename itself survives a power cut). A crash
leaves at most a hidden ``.*.part`` file, which :meth:`Spool.remove_partials` clears at
start-up.

Layout: ``<root>/<YYYY-MM-DD>/<SOPInstanceUID>.dcm``, the day (UTC) the instance arrived. One
folder a day, not one per study and series: a scan is one instance, so folders by study cost two
new folders per scan (two inode allocations and two more folder fsyncs, ~1 ms on the benchmark's
VM), and the database, not the folder, says which study a file belongs to. Files of earlier
versions under ``<root>/<study>/<series>/`` stay where they are (their rows name them). The SOP
Instance UID is checked against PS3.5 9.1 before it becomes a file name, so a sender cannot write
outside the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import queue
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# PS3.5 9.1: components of digits separated by ".", no leading zero, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PARTIAL_SUFFIX = ".part"
RESERVE_SUFFIX = ".reserve"  # an empty file made ahead for the next data set (Spool.writer)
SUFFIX = ".dcm"


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a UID by PS3.5 9.1 (and therefore safe as a file name)."""
    return 0 < len(value) <= 64 and _UID.match(value) is not None


@dataclass(frozen=True)
class Stored:
    """Where an instance was written, how many bytes, and the SHA-256 of those bytes."""

    path: Path
    size_bytes: int
    content_digest: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


INCOMING = ".incoming"  # where data sets are written while they arrive
WRITEBACK_STEP = 256 * 1024  # start writing to disk every this many bytes (see SpoolWriter)


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the parents of what was created
    (the folders whose entries changed), in no particular order."""
    missing: list[Path] = []  # folders whose own parent was missing too, deepest first
    created: list[Path] = []
    current = folder
    while True:
        try:
            current.mkdir()
        except FileExistsError:
            break
        except FileNotFoundError:
            if current == current.parent:
                raise
            missing.append(current)
            current = current.parent
            continue
        created.append(current)
        break
    for below in reversed(missing):
        below.mkdir(exist_ok=True)  # a concurrent store of the same study may be first
        created.append(below)
    return [path.parent for path in created]


def _open_new(path: Path) -> int:
    """Create ``path`` for writing (it must not exist), and its folder if it is missing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o640)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o640)


def _make_durable_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, and make their entries durable."""
    for parent in _make_dirs(folder):
        _fsync_dir(parent)


def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux ``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``, or None elsewhere.

    It starts writing a range to disk without waiting: the fsync at the end then has little
    left to do (measured: 0.4 ms instead of 1.0 ms for a 1 MB file on the benchmark's VM).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        function(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a hint, its result unused

    return start_writeback


_START_WRITEBACK = _sync_file_range()


def _sync_and_close(fd: int, sync: Future[None] | None, flush: Future[None] | None) -> None:
    """fsync ``fd`` (or wait for the fsync already started on it), wait for the earlier
    ``flush`` of its first bytes, and close it; raises the first OSError after closing (an
    fsync's error is reported once, maybe to the earlier flush)."""
    try:
        if sync is None:
            os.fsync(fd)
        else:
            sync.result()
        if flush is not None:
            flush.result()
    finally:
        for started in (sync, flush):
            if started is not None:
                started.exception()  # the descriptor is not closed under an fsync
        os.close(fd)


class SpoolWriter:
    """One instance being written while it arrives: :meth:`write` the bytes as they come,
    then :meth:`commit` them under their final name (or :meth:`discard`).

    The bytes go to a hidden ``.part`` file in the spool's ``.incoming`` folder (its final
    folder is not known until the header is parsed). Writing as the data arrive overlaps the
    disk with the network: every :data:`WRITEBACK_STEP`, what arrived is flushed on another
    thread (``flush_early``) or its writeback started, so the fsync at commit has less to do.
    A failure never raises from :meth:`write`: it is kept and raised by :meth:`commit`, and the
    partial file is removed.
    """

    def __init__(
        self,
        incoming: Path,
        syncer: ThreadPoolExecutor,
        name: str,
        *,
        hash_here: bool = True,
        reserved: tuple[Path, int] | None = None,
        flush_early: bool = False,
        known_folders: set[Path] | None = None,
    ) -> None:
        self._syncer = syncer
        # folders this process made durable (or found there): prepare() need not make them
        self._known_folders = known_folders if known_folders is not None else set()
        self._hasher = hashlib.sha256() if hash_here else None
        self.size = 0
        self._synced_to = 0
        self._sync: Future[None] | None = None  # the fsync start_sync() began
        self._flush: Future[None] | None = None  # the latest flush of what arrived so far
        self.flush_early = flush_early
        # the final folder, being made on another thread (prepare())
        self._folder: tuple[Path, Future[None]] | None = None
        self.error: OSError | None = None
        self._fd: int | None = None
        self.partial = incoming / f".{name}.{os.getpid()}.{time.monotonic_ns()}{PARTIAL_SUFFIX}"
        try:
            self._fd = self._open(reserved)
        except OSError as error:
            self.error = error

    def _open(self, reserved: tuple[Path, int] | None) -> int:
        if reserved is not None:  # an empty file made ahead: renamed, no inode to allocate
            path, fd = reserved
            try:
                os.rename(path, self.partial)
                return fd
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
        return _open_new(self.partial)

    def prepare(self, folder: Path) -> None:
        """Start making the final ``folder`` (and its missing parents) on another thread, with
        their entries durable, as :meth:`commit` would; a commit into that folder then only
        waits for it (one elsewhere does it itself). Nothing for a folder a commit of this
        process used before (the day's): commit's own mkdir finds it there."""
        if folder in self._known_folders:
            return  # commit's mkdir finds it (and makes it again, durably, if it went)
        if self._folder is None and self.error is None:
            self._folder = (folder, self._syncer.submit(_make_durable_dirs, folder))

    def write(self, chunk: bytes | memoryview) -> None:
        """Append ``chunk``; after a failure, nothing (the error waits for :meth:`commit`)."""
        if self._fd is None:
            return
        try:
            view = memoryview(chunk)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            self.error = error
            self.discard()
            return
        if self._hasher is not None:
            self._hasher.update(chunk)  # releases the interpreter lock for a fragment
        self.size += len(chunk)
        if self.size - self._synced_to >= WRITEBACK_STEP:
            if self.flush_early:
                self._flush_written()
            elif _START_WRITEBACK is not None:
                _START_WRITEBACK(self._fd, self._synced_to, self.size - self._synced_to)
                self._synced_to = self.size

    def _flush_written(self) -> None:
        """Make what was written so far durable on another thread while the rest arrives.

        A disk's cache flush costs in proportion to the data written since the last one
        (measured on the benchmark's VM: 2.3 ms for 1 MB at once, 0.3-0.7 ms for the last part
        when the first parts were flushed while the rest arrived), so the final fsync
        finds little to do. While a flush runs, writeback of the newer bytes is only started.
        """
        assert self._fd is not None
        if self._flush is None or self._flush.done():
            if self._flush is not None and self._flush.exception() is not None:
                return  # the error waits for commit (an fsync's error is reported once)
            self._flush = self._syncer.submit(os.fdatasync, self._fd)
        elif _START_WRITEBACK is not None:
            _START_WRITEBACK(self._fd, self._synced_to, self.size - self._synced_to)
        self._synced_to = self.size

    def digest(self) -> str | None:
        """The SHA-256 of the bytes written so far, when this writer hashes them."""
        return None if self._hasher is None else self._hasher.hexdigest()

    def syncing(self) -> bool:
        """Whether the fsync :meth:`start_sync` began is still waiting on the disk."""
        return self._sync is not None and not self._sync.done()

    def start_sync(self) -> None:
        """Start the fsync of what was written, on another thread (:meth:`commit` waits for
        it): the data go to disk while the caller parses the header that names their folder."""
        if self._fd is not None and self.error is None and self._sync is None:
            self._sync = self._syncer.submit(os.fsync, self._fd)

    def commit(
        self, path: Path, digest: Callable[[], str] | None = None, *, overlap: bool = True
    ) -> Stored:
        """Make the bytes durable under ``path`` (see :meth:`Spool.write`).

        ``digest`` returns the SHA-256 of the bytes when this writer does not hash them.
        ``overlap``: the fsyncs of new folders run on other threads, beside the file's (for a
        data set that is alone in its process); without it they follow the folder's fsync on
        this thread — no hand-offs, and on a journalling file system one commit covers them all.

        Raises
        ------
        OSError
            The first error of the writes, or of the fsync, folders or rename; no file (partial
            or final) is left behind.
        """
        if self.error is not None or self._fd is None:
            self.discard()
            raise self.error or OSError("spool writer already closed")
        fd, self._fd = self._fd, None
        sync, self._sync = self._sync, None
        flush, self._flush = self._flush, None
        early, self._folder = self._folder, None
        parents: list[Future[None]] = []  # fsyncs of new folders' parents on other threads
        later: list[Path] = []  # new folders' parents this thread fsyncs after the rename
        try:
            try:
                prepared = early[1] if early is not None and early[0] == path.parent else None
                try:
                    if prepared is None:
                        # A new folder's entry is made durable by fsyncing its parent: on
                        # another thread, while the data are fsynced.
                        later = _make_dirs(path.parent)
                        if overlap:
                            parents = [self._syncer.submit(_fsync_dir, f) for f in later]
                            later = []
                finally:
                    _sync_and_close(fd, sync, flush)
                if prepared is not None:
                    prepared.result()  # the folder is there, its entries durable
                os.replace(self.partial, path)
            except BaseException:
                self.partial.unlink(missing_ok=True)
                raise
            try:
                for folder in [path.parent, *later]:
                    _fsync_dir(folder)
                for future in parents:
                    future.result()  # the OSError of a failed fsync
            except BaseException:
                path.unlink(missing_ok=True)  # not durable: not there
                raise
            if len(self._known_folders) > 64:
                self._known_folders.clear()  # one folder a day: a bound, never reached
            self._known_folders.add(path.parent)
        finally:
            for future in parents if early is None else [*parents, early[1]]:
                future.exception()  # no fsync outlives the call
        return Stored(path=path, size_bytes=self.size, content_digest=self._digest(digest))

    def _digest(self, digest: Callable[[], str] | None) -> str:
        if self._hasher is not None:
            return self._hasher.hexdigest()
        if digest is None:
            raise ValueError("a writer that does not hash needs a digest")
        return digest()

    def discard(self) -> None:
        """Drop what was written (the data set was refused, or never completed)."""
        fd, self._fd = self._fd, None
        sync, self._sync = self._sync, None
        flush, self._flush = self._flush, None
        early, self._folder = self._folder, None
        for started in (sync, flush, None if early is None else early[1]):
            if started is not None:
                started.exception()  # the descriptor is not closed under an fsync
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)


class Spool:
    """Atomic, content-addressed-by-UID storage of received instances under ``root``."""

    def __init__(self, root: Path, *, reserve: int = 0) -> None:
        """``reserve``: how many empty files to keep made ahead in ``.incoming`` for the next
        writers (the listener keeps one: creating a file costs an inode allocation, 0.2-1.5 ms
        on the benchmark's VM, which then happens while no data set waits for it)."""
        self.root = root
        self.incoming = root / INCOMING
        # fsyncs wait on the disk, not the processor: enough threads for many associations'
        # data and new folders at once
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bonescan-fsync")
        self._reserve = reserve
        self._reserved: queue.SimpleQueue[tuple[Path, int]] = queue.SimpleQueue()
        self._known_folders: set[Path] = set()  # see SpoolWriter.prepare

    def path_for(self, sop_uid: str, received: float | None = None) -> Path:
        """The final path of an instance received at ``received`` (seconds since the epoch;
        now when None); ``ValueError`` if ``sop_uid`` is not a valid UID."""
        if not is_valid_uid(sop_uid):
            raise ValueError(f"SOP instance UID {sop_uid[:80]!r} is not a valid UID (PS3.5 9.1)")
        day = time.strftime("%Y-%m-%d", time.gmtime(received))
        return self.root / day / f"{sop_uid}{SUFFIX}"

    def writer(
        self, name: str, *, hash_here: bool = True, flush_early: bool = False
    ) -> SpoolWriter:
        """A :class:`SpoolWriter` for one instance; ``name`` only labels its partial file.

        ``flush_early``: flush the bytes to disk on another thread while the rest arrive (for a
        data set alone in its process: the final fsync then has less to wait for); otherwise
        their writeback is only started."""
        label = name if is_valid_uid(name) else "instance"
        reserved = None
        if self._reserve:
            with contextlib.suppress(queue.Empty):
                reserved = self._reserved.get_nowait()
            if reserved is None:
                self.make_ahead()  # none was: the next writer's, at least
        return SpoolWriter(
            self.incoming,
            self._syncer,
            label,
            hash_here=hash_here,
            reserved=reserved,
            flush_early=flush_early,
            known_folders=self._known_folders,
        )

    def make_ahead(self) -> None:
        """Start making the next writer's file ahead, on another thread (with ``reserve``).

        The listener calls it when a data set's last fragment is in: the sender then waits
        for the answer, so the inode allocation takes a processor nobody needs, not one the
        next data set's fragments are arriving on."""
        if self._reserve:
            self._syncer.submit(self._make_reserve)

    def _make_reserve(self) -> None:
        if self._reserved.qsize() >= self._reserve:
            return
        path = self.incoming / f".reserve.{os.getpid()}.{time.monotonic_ns()}{RESERVE_SUFFIX}"
        try:
            fd = _open_new(path)
        except OSError:
            return  # the next writer opens its own file, and meets the error itself
        self._reserved.put((path, fd))

    def close(self) -> None:
        """Remove the files made ahead (at shutdown; a crash leaves them to
        :meth:`remove_partials`)."""
        self._syncer.shutdown(wait=True)
        while True:
            try:
                path, fd = self._reserved.get_nowait()
            except queue.Empty:
                return
            os.close(fd)
            path.unlink(missing_ok=True)

    def write(
        self, path: Path, *chunks: bytes | memoryview, digest: Callable[[], str] | None = None
    ) -> Stored:
        """Write ``chunks`` to ``path`` atomically and durably; nothing is left on failure.

        A file is visible under its final name only once it is complete and on disk: the bytes
        go to a hidden partial file, which is fsynced, renamed to ``path``, and the folder
        fsynced (so the rename survives a power cut). ``digest``, when given, returns the
        SHA-256 hex digest of the chunks, computed elsewhere; it is called after the data are
        on disk.

        Raises
        ------
        OSError
            When the folder cannot be created or the disk refuses the write; no file (partial or
            final) is left behind.
        """
        writer = self.writer(path.stem, hash_here=digest is None)
        for chunk in chunks:
            writer.write(chunk)
        return writer.commit(path, digest)

    def remove(self, path: Path) -> None:
        """Remove a stored file (a store whose database row could not be committed)."""
        path.unlink(missing_ok=True)

    def remove_partials(self, older_than_s: float = 0.0, *, pid: int | None = None) -> int:
        """Delete partial files a crash left behind (those of process ``pid`` only, when
        given: an association process that died); return how many."""
        removed = 0
        cutoff = time.time() - older_than_s

        def owned(paths: Iterable[Path]) -> list[Path]:  # named .<name>.<pid>.<ns>.<suffix>
            return [p for p in paths if pid is None or p.name.split(".")[-3:-2] == [str(pid)]]

        for reserve in owned(self.incoming.glob(f".*{RESERVE_SUFFIX}")):
            reserve.unlink(missing_ok=True)  # empty files made ahead: nothing was lost
        partials = owned(
            [
                *self.incoming.glob(f".*{PARTIAL_SUFFIX}"),
                *self.root.glob(f"*/*/.*{PARTIAL_SUFFIX}"),  # written by earlier versions
            ]
        )
        for partial in partials:
            try:
                if partial.stat().st_mtime <= cutoff:
                    partial.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            logger.warning("spool_partials_removed count=%d", removed)
        return removed

    def files(self) -> Iterator[Path]:
        """Every complete file in the spool (in day folders, and in the study and series
        folders of earlier versions)."""
        for pattern in (f"*/*{SUFFIX}", f"*/*/*{SUFFIX}"):
            yield from (p for p in self.root.glob(pattern) if p.parent.name != INCOMING)
