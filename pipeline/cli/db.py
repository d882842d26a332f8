"""``bonescan db``: create, inspect and check the tracking database schema."""

from __future__ import annotations

from typing import Annotated

import typer
from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from pipeline.cli.common import display_url, fail, first_line, settings_or_exit
from pipeline.db import migrate

app = typer.Typer(
    help="Create, inspect and check the tracking database schema.", no_args_is_help=True
)


def _database_error(url: str, error: Exception) -> str:
    return f"database {display_url(url)}: {first_line(error)}"


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Create the schema or bring it up to the newest revision (safe to run again)."""
    url = settings_or_exit().database_url
    try:
        migrate.upgrade(url, revision)
        current = migrate.current_revision(url)
    except (SQLAlchemyError, CommandError, ValueError, OSError) as error:
        fail(_database_error(url, error))
    typer.echo(f"database {display_url(url)} is at revision {current}")


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops every table.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Take the schema back to an older revision (data in dropped tables is lost)."""
    url = settings_or_exit().database_url
    if not yes and not typer.confirm(f"Downgrade {display_url(url)} to {revision}?"):
        fail("downgrade cancelled")
    try:
        migrate.downgrade(url, revision)
        current = migrate.current_revision(url)
    except (SQLAlchemyError, CommandError, ValueError, OSError) as error:
        fail(_database_error(url, error))
    typer.echo(f"database {display_url(url)} is at revision {current or 'base (empty)'}")


@app.command()
def current() -> None:
    """Show the schema revision of the database and whether it is up to date."""
    url = settings_or_exit().database_url
    try:
        revision = migrate.current_revision(url)
    except (SQLAlchemyError, ValueError, OSError) as error:
        fail(_database_error(url, error))
    head = migrate.head_revision()
    if revision is None:
        fail(f"database {display_url(url)} has no schema: run `bonescan db upgrade`")
    state = "up to date" if revision == head else f"behind {head}: run `bonescan db upgrade`"
    typer.echo(f"{revision} ({state})")


@app.command()
def check() -> None:
    """Check that the database is at the newest revision and matches the models."""
    url = settings_or_exit().database_url
    try:
        migrate.check(url)
    except migrate.SchemaDriftError as error:
        fail(f"schema drift: {first_line(error)}")
    except (SQLAlchemyError, CommandError, ValueError, OSError) as error:
        fail(_database_error(url, error))
    typer.echo(
        f"database {display_url(url)} matches the models at revision {migrate.head_revision()}"
    )
