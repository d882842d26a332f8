"""The embedded broker of ``bonescan serve``: kombu's SQLAlchemy transport over a SQLite file.

No server to install: a newcomer's ``serve`` keeps its queue in ``<data>/broker.sqlite``. Two
changes from kombu's ``sqla`` transport, registered as the ``bonescan-sqlite`` transport:

- it polls every 0.1 s instead of every second (each hop — listener → segment → export — would
  otherwise wait half a second on average);
- the SQLAlchemy engine gets only its own options: kombu's transport passes every transport
  option to ``create_engine``, and Celery's (``visibility_timeout``, socket timeouts for Redis)
  make that fail.

Delivery is at least once, like Redis: a message taken by a worker that dies is not restored,
and the listener's sweeper re-sends the task of a job whose lease ran out (DESIGN.md).
URL: ``bonescan-sqlite+sqlite:////abs/path/broker.sqlite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SqlaChannel
from kombu.transport.sqlalchemy import Transport as SqlaTransport
from sqlalchemy import create_engine

SCHEME = "bonescan-sqlite"
POLLING_INTERVAL_S = 0.1
SQLITE_BUSY_TIMEOUT_S = 30


def embedded_broker_url(data_dir: Path) -> str:
    """The broker URL of ``serve`` on embedded defaults, in ``data_dir``."""
    return f"{SCHEME}+sqlite:///{(data_dir.resolve() / 'broker.sqlite').as_posix()}"


class EmbeddedChannel(SqlaChannel):
    """kombu's SQLAlchemy channel with an engine built from the URL alone."""

    def _engine_from_config(self) -> Any:
        url = self.connection.client.hostname
        return create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})


class EmbeddedTransport(SqlaTransport):
    """kombu's SQLAlchemy transport, polling every 0.1 s."""

    Channel = EmbeddedChannel
    polling_interval = POLLING_INTERVAL_S


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:EmbeddedTransport"
