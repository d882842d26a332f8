"""Sessions for the listener's threads; on SQLite, write transactions take turns in-process.

SQLite allows one writer at a time, and a writer that finds the lock taken sleeps in SQLite's
busy handler (1, 2, 5, 10 … ms steps) before it tries again. Handler threads and the sweeper
write often and briefly, so they queue on a Python lock instead and wake the moment it is free.
PostgreSQL has row locks and needs none of this.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from pipeline.db.session import make_session_factory


class Sessions(Protocol):
    """What the listener needs of a session factory: read sessions and write transactions."""

    def __call__(self) -> Session: ...

    def begin(self) -> AbstractContextManager[Session]: ...

    def connect(self) -> AbstractContextManager[Connection]: ...

    def transaction(self) -> AbstractContextManager[Connection]: ...


class ListenerSessions:
    """A session factory whose ``begin()`` serialises writers on SQLite (see the module doc)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._factory = make_session_factory(engine)
        serialise = engine.dialect.name == "sqlite"
        self._lock: AbstractContextManager[object] = (
            threading.Lock() if serialise else nullcontext()
        )

    def __call__(self) -> Session:
        return self._factory()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        with self._lock, self._factory.begin() as session:
            yield session

    def connect(self) -> AbstractContextManager[Connection]:
        """A Core connection for reads (the hot path's lookups)."""
        return self._engine.connect()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core write transaction (committed on exit), serialised like :meth:`begin`."""
        with self._lock, self._engine.begin() as connection:
            yield connection
