"""The spool: received instances on disk, exactly as they arrived, written atomically.

A file is visible under its final name only once it is complete and on disk: bytes go, as they
arrive, to a hidden temporary file in ``<root>/.incoming``, which is fsynced, renamed to the
final name and the final folder fsynced (so the rename itself survives a power cut). A crash
leaves at most a hidden ``.*.part`` file, which :meth:`Spool.remove_partials` clears at
start-up.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. UIDs are checked
against PS3.5 9.1 before they become path components, so a sender cannot write outside the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# PS3.5 9.1: components of digits separated by ".", no leading zero, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PARTIAL_SUFFIX = ".part"
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


def _sync_and_close(fd: int, sync: Future[None] | None) -> None:
    """fsync ``fd`` (or wait for the fsync already started on it) and close it; raises the
    fsync's OSError after closing."""
    try:
        if sync is None:
            os.fsync(fd)
        else:
            sync.result()
    finally:
        if sync is not None:
            sync.exception()  # the descriptor is not closed under its fsync
        os.close(fd)


class SpoolWriter:
    """One instance being written while it arrives: :meth:`write` the bytes as they come,
    then :meth:`commit` them under their final name (or :meth:`discard`).

    The bytes go to a hidden ``.part`` file in the spool's ``.incoming`` folder (its final
    folder is not known until the header is parsed). Writing as the data arrive overlaps the
    disk with the network, and the writeback of each :data:`WRITEBACK_STEP` starts at once, so
    the fsync at commit finds little to do. A failure never raises from :meth:`write`: it is
    kept and raised by :meth:`commit`, and the partial file is removed.
    """

    def __init__(
        self, incoming: Path, syncer: ThreadPoolExecutor, name: str, *, hash_here: bool = True
    ) -> None:
        self._incoming = incoming
        self._syncer = syncer
        self._hasher = hashlib.sha256() if hash_here else None
        self.size = 0
        self._synced_to = 0
        self._sync: Future[None] | None = None  # the fsync start_sync() began
        self.error: OSError | None = None
        self._fd: int | None = None
        self.partial = incoming / f".{name}.{os.getpid()}.{time.monotonic_ns()}{PARTIAL_SUFFIX}"
        try:
            self._fd = self._open()
        except OSError as error:
            self.error = error

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.partial, flags, 0o640)
        except FileNotFoundError:
            self._incoming.mkdir(parents=True, exist_ok=True)
            return os.open(self.partial, flags, 0o640)

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
        if _START_WRITEBACK is not None and self.size - self._synced_to >= WRITEBACK_STEP:
            _START_WRITEBACK(self._fd, self._synced_to, self.size - self._synced_to)
            self._synced_to = self.size

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
        parents: list[Future[None]] = []
        made: list[Path] = []
        try:
            try:
                try:
                    # A new folder's entry is made durable by fsyncing its parent: on another
                    # thread, while the data are fsynced.
                    made = _make_dirs(path.parent)
                    if overlap:
                        parents = [self._syncer.submit(_fsync_dir, folder) for folder in made]
                finally:
                    _sync_and_close(fd, sync)
                os.replace(self.partial, path)
            except BaseException:
                self.partial.unlink(missing_ok=True)
                raise
            try:
                _fsync_dir(path.parent)
                if not overlap:
                    for folder in made:
                        _fsync_dir(folder)
                for future in parents:
                    future.result()  # the OSError of a failed fsync
            except BaseException:
                path.unlink(missing_ok=True)  # not durable: not there
                raise
        finally:
            for future in parents:
                future.exception()  # no fsync outlives the call
        content = self._hasher.hexdigest() if self._hasher is not None else None
        if content is None:
            if digest is None:
                raise ValueError("a writer that does not hash needs a digest")
            content = digest()
        return Stored(path=path, size_bytes=self.size, content_digest=content)

    def discard(self) -> None:
        """Drop what was written (the data set was refused, or never completed)."""
        fd, self._fd = self._fd, None
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.exception()  # the descriptor is not closed under its fsync
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)


class Spool:
    """Atomic, content-addressed-by-UID storage of received instances under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING
        # fsyncs wait on the disk, not the processor: enough threads for many associations'
        # data and new folders at once
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bonescan-fsync")

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The final path of an instance; ``ValueError`` if a UID is not a valid UID."""
        for name, uid in (("study", study_uid), ("series", series_uid), ("SOP instance", sop_uid)):
            if not is_valid_uid(uid):
                raise ValueError(f"{name} UID {uid[:80]!r} is not a valid UID (PS3.5 9.1)")
        return self.root / study_uid / series_uid / f"{sop_uid}{SUFFIX}"

    def writer(self, name: str, *, hash_here: bool = True) -> SpoolWriter:
        """A :class:`SpoolWriter` for one instance; ``name`` only labels its partial file."""
        label = name if is_valid_uid(name) else "instance"
        return SpoolWriter(self.incoming, self._syncer, label, hash_here=hash_here)

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
        partials = [
            *self.incoming.glob(f".*{PARTIAL_SUFFIX}"),
            *self.root.glob(f"*/*/.*{PARTIAL_SUFFIX}"),  # written by earlier versions
        ]
        if pid is not None:  # SpoolWriter names them .<name>.<pid>.<ns>.part
            partials = [p for p in partials if p.name.split(".")[-3:-2] == [str(pid)]]
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
        """Every complete file in the spool."""
        return (path for path in self.root.glob(f"*/*/*{SUFFIX}") if path.parts[-3] != INCOMING)
