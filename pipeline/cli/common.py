"""What every command shares: settings read once, and errors as one human line with exit 1."""

from __future__ import annotations

from typing import NoReturn

import typer
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from pipeline.settings import InvalidSettingsError, Settings, get_settings


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 1 (Typer/hatch manner)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def settings_or_exit() -> Settings:
    """The process settings, or one line naming the bad variable and exit 1."""
    try:
        return get_settings()
    except InvalidSettingsError as error:
        fail(str(error))


def first_line(error: BaseException) -> str:
    """The first line of an exception's message: drivers add SQL and hints below it."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def display_url(url: str) -> str:
    """A database or broker URL with its password masked, for terminal output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}" if rest else url
