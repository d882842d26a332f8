"""What the admin commands (studies, jobs, exports, review, peers, stats, purge) share.

The database session with its errors as one line, dates and durations read from options, rich
tables and JSON output (patient name and ID hidden with ``--no-phi``), the acting user for the
audit trail, and sending tasks by name after the commit. Celery and kombu are imported only
when a command sends something: listing jobs should not pay for them.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.cli.common import display_url, fail, first_line
from pipeline.db.admin import AdminError
from pipeline.db.session import make_engine, make_session_factory
from pipeline.settings import Settings
from pipeline.tasks.names import QueueName, TaskName

E = TypeVar("E", bound=StrEnum)

PHI_KEYS = frozenset({"patient_name", "patient_id"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# One quick retry inside kombu, as the listener does; a down broker must not hang the CLI.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NoPhiOption = Annotated[
    bool, typer.Option("--no-phi", help="Hide patient name and ID (tables and JSON).")
]
LimitOption = Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")]


# ---------------------------------------------------------------------------------------------
# Reading options


def parse_duration(text: str, option: str) -> timedelta:
    """``30m``, ``2h``, ``3d``, ``1w`` (or seconds ``90s``) as a timedelta; one line if not."""
    match = _DURATION.match(text)
    if match is None:
        fail(f"{option}: cannot read {text!r} as a duration (like 45m, 2h, 3d, 1w)")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


def parse_date(text: str, option: str, *, end_of_day: bool = False) -> datetime:
    """An ISO date or date-time as aware UTC; naive values are the machine's local time.

    With ``end_of_day``, a bare date means the end of that day (``--to 2024-05-01`` includes
    May 1st).
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"{option}: cannot read {text!r} as a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)")
    if end_of_day and _is_bare_date(text):
        value += timedelta(days=1)
    return value.astimezone(UTC)  # naive → local time (Python's astimezone rule)


def _is_bare_date(text: str) -> bool:
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


def parse_since(text: str | None, option: str = "--since") -> datetime | None:
    """``--since``: a date (``2024-05-01``) or a duration ago (``2h``, ``3d``)."""
    if text is None:
        return None
    if _DURATION.match(text):
        return datetime.now(UTC) - parse_duration(text, option)
    return parse_date(text, option)


def parse_id(text: str, what: str) -> int:
    """A positive integer id from an argument, or one line naming it."""
    try:
        value = int(text)
    except ValueError:
        fail(f"{what} must be a number, got {text!r}")
    if value < 1:
        fail(f"{what} must be positive, got {value}")
    return value


def parse_state(text: str | None, states: type[E], what: str) -> E | None:
    """A state given by value (``failed``), or one line listing the valid ones."""
    if text is None:
        return None
    try:
        return states(text.strip().lower())
    except ValueError:
        fail(f"unknown {what} state {text!r} (one of {', '.join(s.value for s in states)})")


def actor(name: str | None = None) -> str:
    """Who acts, for the audit trail: ``name`` if given, else ``$USER``, else the login name."""
    if name and name.strip():
        return name.strip()
    if os.environ.get("USER"):
        return os.environ["USER"]
    try:
        return getpass.getuser()
    except OSError:  # no $USER, $LOGNAME nor passwd entry (some containers)
        return "unknown"


# ---------------------------------------------------------------------------------------------
# The database


@contextmanager
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """A session factory on the configured database; database and admin errors become one line
    and exit 1 (the transaction is rolled back by ``begin()``)."""
    url = settings.database_url
    try:
        engine = make_engine(url)
    except ValueError as error:
        fail(f"database {display_url(url)}: {error}")
    try:
        yield make_session_factory(engine)
    except AdminError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        message = first_line(error)
        if "no such table" in message or "does not exist" in message:
            message += " (run `bonescan db upgrade`)"
        fail(f"database {display_url(url)}: {message}")
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Output


def console() -> Console:
    """A console on the current stdout: wide when piped, so UIDs are never cut."""
    wide = None if sys.stdout.isatty() else 240
    return Console(file=sys.stdout, highlight=False, width=wide, soft_wrap=False)


Column = tuple[str, Callable[[Any], object]]


def show_table(
    title: str | None, columns: Sequence[Column], rows: Sequence[Any], *, no_phi: bool = False
) -> None:
    """Print ``rows`` as a table; a column whose header starts with ``patient`` is PHI."""
    shown = [(h, get) for h, get in columns if not (no_phi and h.startswith("patient"))]
    table = Table(title=title, title_justify="left", show_lines=False)
    for header, _ in shown:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(text(get(row)) for _, get in shown))
    console().print(table)


def text(value: object) -> str:
    """A cell: ``-`` for nothing, local time for timestamps, the value of enums."""
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def when(value: datetime | None) -> str:
    """A timestamp in the machine's local time, to the second."""
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """``0.35 s``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def jsonable(value: Any, *, no_phi: bool = False) -> Any:
    """Dataclasses, dicts and lists as JSON values: timestamps ISO 8601 UTC, PHI dropped on
    request."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {
            str(k): jsonable(v, no_phi=no_phi)
            for k, v in value.items()
            if not (no_phi and k in PHI_KEYS)
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(v, no_phi=no_phi) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value


def print_json(value: Any, *, no_phi: bool = False) -> None:
    """Print ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(jsonable(value, no_phi=no_phi), indent=2, ensure_ascii=False))


def warn(message: str) -> None:
    """One ``warning:`` line on stderr: the command did its work, but something needs a look."""
    typer.echo(f"warning: {message}", err=True)


# ---------------------------------------------------------------------------------------------
# Sending tasks


@dataclass(frozen=True)
class SendOutcome:
    """Which ids' tasks the broker took, and why the rest were not sent (None: all sent)."""

    sent: list[int]
    error: str | None


def send_tasks(
    settings: Settings, task: TaskName, queue: QueueName, argument: str, ids: Sequence[int]
) -> SendOutcome:
    """Send ``task`` with ``{argument: id}`` for each id, by name (the CLI never imports the
    task modules); stop at the first broker error."""
    if not ids:
        return SendOutcome([], None)
    if settings.broker_url is None:
        return SendOutcome([], "no broker configured (BONESCAN_BROKER_URL is not set)")
    from kombu.exceptions import KombuError  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415

    from pipeline.celery_app import make_celery  # noqa: PLC0415

    app = make_celery(settings)
    sent: list[int] = []
    try:
        for item in ids:
            app.send_task(
                task.value,
                kwargs={argument: item},
                queue=queue.value,
                retry=True,
                retry_policy=RETRY_POLICY,
            )
            sent.append(item)
    except (KombuError, RedisError, OSError) as error:
        shown = display_url(settings.broker_url)
        return SendOutcome(sent, f"broker {shown} unreachable: {first_line(error)}")
    finally:
        app.close()
    return SendOutcome(sent, None)


def ids_text(ids: Sequence[int]) -> str:
    """``5, 6, 7``."""
    return ", ".join(str(i) for i in ids)
