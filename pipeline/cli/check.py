"""``bonescan check``: is everything this host needs configured and reachable?"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import typer
from sqlalchemy.exc import SQLAlchemyError

from pipeline.cli.common import display_url, first_line
from pipeline.db import migrate
from pipeline.settings import Destination, InvalidSettingsError, Settings, get_settings

Probe = Callable[[], tuple[bool, str]]


def _database(settings: Settings) -> tuple[bool, str]:
    url = settings.database_url
    try:
        revision = migrate.current_revision(url)
    except (SQLAlchemyError, ValueError, OSError) as error:
        return False, f"{display_url(url)} unreachable: {first_line(error)}"
    head = migrate.head_revision()
    if revision != head:
        return (
            False,
            f"{display_url(url)} at {revision or 'no schema'}, needs `bonescan db upgrade`",
        )
    return True, f"{display_url(url)} at revision {revision}"


def _broker(settings: Settings) -> tuple[bool, str]:
    if settings.broker_url is None:
        return True, "embedded (BONESCAN_BROKER_URL not set)"
    shown = display_url(settings.broker_url)
    # Imported here: every `bonescan` command loads this module, few need kombu or pynetdicom.
    from kombu.connection import Connection  # noqa: PLC0415

    from pipeline import broker as _embedded  # noqa: F401, PLC0415 - the bonescan-sqlite scheme

    try:
        with Connection(settings.broker_url, connect_timeout=3) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as error:  # kombu raises transport-specific errors; all mean "unreachable"
        return False, f"{shown} unreachable: {first_line(error)}"
    return True, shown


def _destination(settings: Settings, destination: Destination) -> tuple[bool, str]:
    from pipeline.dicom.scu import echo  # noqa: PLC0415 (see _broker)

    result = echo(destination, settings.listener.ae_title, timeout_s=5)
    return (
        result.ok,
        f"{destination.ae_title}@{destination.host}:{destination.port} {result.detail}",
    )


def _probes(settings: Settings) -> list[tuple[str, Probe]]:
    probes: list[tuple[str, Probe]] = [
        ("database", partial(_database, settings)),
        ("broker", partial(_broker, settings)),
    ]
    probes += [
        (f"destination {d.name}", partial(_destination, settings, d)) for d in settings.destinations
    ]
    return probes


def check() -> None:
    """Check settings, database, broker and each destination: one line each, exit 1 on failure."""
    try:
        settings = get_settings()
    except InvalidSettingsError as error:
        typer.echo(f"FAIL settings: {error}")
        raise typer.Exit(1) from None
    typer.echo("ok   settings")
    failed = False
    for name, probe in _probes(settings):
        ok, detail = probe()
        failed |= not ok
        typer.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not settings.destinations:
        typer.echo("ok   destinations: none configured (results stay local)")
    if failed:
        raise typer.Exit(1)
