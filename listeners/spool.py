"""The spool: received instances on disk, exactly as they arrived, written atomically.

A file is visible under its final name only once it is complete and on disk: bytes go to a
hidden temporary file in the same folder, which is fsynced, renamed over the final name and the
folder fsynced (so the rename itself survives a power cut). A crash leaves at most a hidden
``.*.part`` file, which :meth:`Spool.remove_partials` clears at start-up.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. UIDs are checked
against PS3.5 9.1 before they become path components, so a sender cannot write outside the root.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


class Spool:
    """Atomic, content-addressed-by-UID storage of received instances under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._syncer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bonescan-fsync")

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The final path of an instance; ``ValueError`` if a UID is not a valid UID."""
        for name, uid in (("study", study_uid), ("series", series_uid), ("SOP instance", sop_uid)):
            if not is_valid_uid(uid):
                raise ValueError(f"{name} UID {uid[:80]!r} is not a valid UID (PS3.5 9.1)")
        return self.root / study_uid / series_uid / f"{sop_uid}{SUFFIX}"

    def write(
        self, path: Path, *chunks: bytes | memoryview, digest: Callable[[], str] | None = None
    ) -> Stored:
        """Write ``chunks`` to ``path`` atomically and durably; nothing is left on failure.

        ``digest``, when given, returns the SHA-256 hex digest of the chunks, computed elsewhere
        (the handler hashes on another core while it parses; hashlib releases the GIL); it is
        called after the data are on disk.

        Raises
        ------
        OSError
            When the folder cannot be created or the disk refuses the write; no file (partial or
            final) is left behind.
        """
        hasher = hashlib.sha256()
        hash_here = digest is None
        content_digest = digest or hasher.hexdigest  # called once every chunk is on disk
        size = 0
        created = self._make_dirs(path.parent)
        # A new folder's entry is made durable by fsyncing its parent; that can start now, on
        # another thread, while the data are written (the series folder waits for the rename).
        parents = [self._syncer.submit(_fsync_dir, folder) for folder in created]
        partial = path.with_name(
            f".{path.name}.{os.getpid()}.{time.monotonic_ns()}{PARTIAL_SUFFIX}"
        )
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                try:
                    for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            written = os.write(fd, view)
                            view = view[written:]
                        if hash_here:
                            hasher.update(chunk)
                        size += len(chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            try:
                _fsync_dir(path.parent)
                for future in parents:
                    future.result()  # the OSError of a failed fsync
            except BaseException:
                path.unlink(missing_ok=True)  # not durable: not there
                raise
        finally:
            for future in parents:
                future.exception()  # no fsync outlives the call
        return Stored(path=path, size_bytes=size, content_digest=content_digest())

    def _make_dirs(self, folder: Path) -> list[Path]:
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

    def remove(self, path: Path) -> None:
        """Remove a stored file (a store whose database row could not be committed)."""
        path.unlink(missing_ok=True)

    def remove_partials(self, older_than_s: float = 0.0) -> int:
        """Delete partial files a crash left behind; return how many."""
        removed = 0
        cutoff = time.time() - older_than_s
        for partial in self.root.glob(f"*/*/.*{PARTIAL_SUFFIX}"):
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
        return self.root.glob(f"*/*/*{SUFFIX}")
