"""Fixtures for real peers: a fresh PostgreSQL database per run, a Redis database, SQLite files.

A needed service that is down fails the test with the command that starts it (STYLE.md): no
skips. Override the servers with ``BONESCAN_TEST_POSTGRES_URL`` (an admin URL: the tests create
and drop their own database there) and ``BONESCAN_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

pytest_plugins = ["tests.integration.pacs"]

POSTGRES_ADMIN_URL = os.environ.get(
    "BONESCAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BONESCAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"


def _postgres_admin() -> URL:
    return make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg")


@pytest.fixture(scope="session")
def postgres_server() -> URL:
    """The admin URL of a reachable PostgreSQL server (fails with how to start it)."""
    engine = create_engine(_postgres_admin(), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {_postgres_admin().render_as_string()}: "
            f"{str(error.orig).splitlines()[0]}. Start it with: {START_POSTGRES}"
        )
    finally:
        engine.dispose()
    return _postgres_admin()


@pytest.fixture
def postgres_url(postgres_server: URL) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"bonescan_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in a fresh directory (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'data' / 'bonescan.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated database of each backend (see ``database_url``)."""
    from pipeline.db import migrate
    from pipeline.db.session import make_engine

    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database emptied before the test (fails with how to start Redis if it is down)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}. Start it with: {START_REDIS}")
    yield REDIS_URL
    client.flushdb()
    client.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a subprocess (or an in-process settings read) with no stray ``BONESCAN_*``
    variables, a fresh data dir and no ``.env`` file in the working directory."""
    for key in list(os.environ):
        if key.startswith("BONESCAN_"):
            monkeypatch.delenv(key)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BONESCAN_")}
    env["BONESCAN_DATA_DIR"] = str(tmp_path / "data")
    return env
