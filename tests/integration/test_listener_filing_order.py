"""The C-STORE handler's order of durability, alone and among others: the file is durable under
its final name before its row commits, the row commits before Success, and a failure of either
leaves neither.

The handler runs in this process on a real spool and a real SQLite database (the association
around it is tested against storescu elsewhere); what is observed is the order of the fsyncs
and the transaction's statements and commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from listeners import spool as spool_module
from listeners.database import ListenerSessions
from listeners.handlers import Arrival, RecordWriter, StoreHandlers
from listeners.metrics import ListenerMetrics
from listeners.scp import SUCCESS, Answer, Peer, StoreCommand
from listeners.spool import Spool
from pipeline.db.migrate import upgrade
from pipeline.db.session import make_engine
from tests.integration import dicom_factory as factory
from tests.integration.conftest import dataset_bytes

OUT_OF_RESOURCES = 0xA700
PEER = Peer(address="127.0.0.1", port=11112, calling_ae_title="MODALITY", called_ae_title="BS")


class _Arrivals:
    def __init__(self) -> None:
        self.opened_jobs: list[int] = []

    def notify(self, arrival: Arrival) -> None:
        pass

    def opened(self, job_id: int) -> None:
        self.opened_jobs.append(job_id)


class _Watched:
    """The listener's sessions, with the order of write transactions' events recorded, and a
    commit that can be made to fail."""

    def __init__(self, engine: Engine, events: list[str]) -> None:
        self._sessions = ListenerSessions(engine)
        self.events = events
        self.fail_commit = False

    def __call__(self) -> Session:
        return self._sessions()

    def begin(self) -> AbstractContextManager[Session]:
        return self._sessions.begin()

    def connect(self) -> AbstractContextManager[Connection]:
        return self._sessions.connect()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._sessions.transaction() as connection:
            self.events.append("statements")
            yield connection
            if self.fail_commit:
                raise OperationalError("COMMIT", {}, Exception("disk I/O error"))
            self.events.append("commit")


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'bonescan.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine, events: list[str]) -> _Watched:
    return _Watched(engine, events)


@pytest.fixture
def handlers(
    tmp_path: Path, sessions: _Watched, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreHandlers]:
    real = spool_module._fsync_dir

    def watched(path: Path) -> None:
        real(path)
        events.append(f"fsync {path.name}")

    monkeypatch.setattr(spool_module, "_fsync_dir", watched)
    spool = Spool(tmp_path / "spool", reserve=1)
    yield StoreHandlers(
        spool,
        sessions,
        _Arrivals(),
        ListenerMetrics(),
        writer=RecordWriter(sessions, "test-model"),
    )
    spool.close()


def _send(handlers: StoreHandlers, scan: pydicom.Dataset, tmp_path: Path) -> Answer:
    """What the SCP does with one C-STORE: the command, the data set in fragments, the end."""
    data = dataset_bytes(factory.save(scan, tmp_path / "scan.dcm"))
    command = StoreCommand(
        message_id=1,
        sop_class_uid=str(scan.SOPClassUID),
        sop_instance_uid=str(scan.SOPInstanceUID),
        transfer_syntax_uid=str(scan.file_meta.TransferSyntaxUID),
    )
    sink = handlers.begin_store(PEER, command)
    view = memoryview(data)
    for at in range(0, len(data), 16 * 1024):
        sink.write(view[at : at + 16 * 1024])
    return sink.finish(view)


def _rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        query = text("SELECT spool_path, content_digest FROM instances")
        return [(row[0], row[1]) for row in connection.execute(query)]


def _files(handlers: StoreHandlers) -> list[Path]:
    return sorted(handlers.spool.files())


def test_alone_the_row_commits_after_the_file_is_durable_under_its_name(
    handlers: StoreHandlers, engine: Engine, events: list[str], tmp_path: Path
) -> None:
    """Alone in the listener, the row's statements run while the file's fsync waits on the
    disk; the commit still follows the folder's fsync that makes the rename durable."""
    scan = factory.nm_whole_body()
    assert _send(handlers, scan, tmp_path).status == SUCCESS
    [path] = _files(handlers)
    day_folder = f"fsync {path.parent.name}"
    assert events.index("statements") < events.index(day_folder) < events.index("commit")
    assert _rows(engine) == [(str(path), hashlib.sha256(path.read_bytes()).hexdigest())]
    assert handlers.arrivals.opened_jobs  # type: ignore[attr-defined]  # the 2-frame scan's job


def test_among_others_the_row_commits_after_the_file_is_durable(
    handlers: StoreHandlers, engine: Engine, events: list[str], tmp_path: Path
) -> None:
    """With another association in the listener, the row is committed with the others' rows
    (RecordWriter) once the file is durable: no transaction stays open across an fsync."""
    handlers.associations = lambda: 2
    scan = factory.nm_whole_body()
    assert _send(handlers, scan, tmp_path).status == SUCCESS
    [path] = _files(handlers)
    assert events.index(f"fsync {path.parent.name}") < events.index("statements")
    assert _rows(engine) == [(str(path), hashlib.sha256(path.read_bytes()).hexdigest())]


@pytest.mark.parametrize("others", [1, 2], ids=["alone", "among-others"])
def test_a_row_that_cannot_commit_leaves_no_file(
    handlers: StoreHandlers, sessions: _Watched, engine: Engine, tmp_path: Path, others: int
) -> None:
    handlers.associations = lambda: others
    sessions.fail_commit = True
    answer = _send(handlers, factory.nm_whole_body(), tmp_path)
    assert answer.status == OUT_OF_RESOURCES
    assert _files(handlers) == []
    assert _rows(engine) == []


@pytest.mark.parametrize("others", [1, 2], ids=["alone", "among-others"])
def test_a_file_that_cannot_be_made_durable_leaves_no_row(
    handlers: StoreHandlers,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    others: int,
) -> None:
    handlers.associations = lambda: others

    def failing(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_dir", failing)
    answer = _send(handlers, factory.nm_whole_body(), tmp_path)
    assert answer.status == OUT_OF_RESOURCES
    assert _files(handlers) == []
    assert _rows(engine) == []
    assert [p for p in handlers.spool.incoming.iterdir() if p.suffix == ".part"] == []


@pytest.mark.parametrize("others", [1, 2], ids=["alone", "among-others"])
def test_a_resend_on_another_day_keeps_the_first_file(
    handlers: StoreHandlers,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    others: int,
) -> None:
    """A resend whose file would lie elsewhere (filed on another day: no file in place to
    find) is caught by the instance's unique key: alone, before anything is renamed; among
    others, its new file is removed. The row keeps the first file."""
    handlers.associations = lambda: others
    scan = factory.nm_whole_body()
    today = handlers.spool.path_for
    monkeypatch.setattr(handlers.spool, "path_for", lambda uid: today(uid, 1772366400.0))
    assert _send(handlers, scan, tmp_path).status == SUCCESS
    [path] = _files(handlers)
    assert path.parent.name == "2026-03-01"
    monkeypatch.setattr(handlers.spool, "path_for", today)
    assert _send(handlers, scan, tmp_path).status == SUCCESS
    assert _files(handlers) == [path]
    assert [row[0] for row in _rows(engine)] == [str(path)]


def test_alone_early_flushes_only_while_the_disk_is_behind(
    handlers: StoreHandlers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data set alone flushes its bytes while they arrive only while the disk was behind:
    the fsync of one written without them still running when its row was ready. Every 16th
    data set is such a probe."""
    plan = [handlers.flush_early() for _ in range(32)]
    assert [i for i, flushes in enumerate(plan) if not flushes] == [15, 31]
    behind = [False]
    monkeypatch.setattr(spool_module.SpoolWriter, "syncing", lambda self: behind[0])
    flushes: list[bool] = []
    real_writer = handlers.spool.writer

    def writer(name: str, **options: bool) -> spool_module.SpoolWriter:
        flushes.append(options["flush_early"])
        return real_writer(name, **options)

    monkeypatch.setattr(handlers.spool, "writer", writer)
    for _ in range(14):
        handlers.flush_early()  # the next data set flushes early, the one after is a probe
    for disk_behind in (False, False, True, True):
        behind[0] = disk_behind
        assert _send(handlers, factory.nm_whole_body(), tmp_path).status == SUCCESS
    # the first flushes early (its fsync is not judged); the second is a probe and finds the
    # disk not behind, so the third goes without; it finds the disk behind: the fourth flushes
    assert flushes == [True, False, False, True]
