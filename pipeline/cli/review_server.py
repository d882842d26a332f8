"""``bonescan review-server``: the review page (worklist, overlays, accept / reject).

``bonescan review-server [--host H] [--port P]`` serves it; ``bonescan review-server
hash-password`` makes the ``BONESCAN_REVIEW_PASSWORD_HASH`` line from a password typed twice
(or one line on stdin). Without a hash configured the server refuses to start: the page shows
patient data and is never served without a login.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from pipeline.cli.common import display_url, fail, settings_or_exit

app = typer.Typer(help="The review page: worklist, SEG overlays, accept / reject.")

HostOption = Annotated[
    str | None,
    typer.Option("--host", help="Address to bind (default: BONESCAN_REVIEW__HOST, 127.0.0.1)."),
]
PortOption = Annotated[
    int | None,
    typer.Option(
        "--port", min=1, max=65535, help="TCP port (default: BONESCAN_REVIEW__PORT, 8080)."
    ),
]


@app.callback(invoke_without_command=True)
def review_server(ctx: typer.Context, host: HostOption = None, port: PortOption = None) -> None:
    """Serve the review page until Ctrl-C (needs BONESCAN_REVIEW_PASSWORD_HASH)."""
    if ctx.invoked_subcommand is not None:
        return
    from pipeline.db.session import make_engine, make_session_factory  # noqa: PLC0415
    from pipeline.review_web.app import ReviewApp  # noqa: PLC0415
    from pipeline.review_web.auth import PasswordHash, PasswordHashError  # noqa: PLC0415
    from pipeline.review_web.server import serve  # noqa: PLC0415

    settings = settings_or_exit()
    if settings.review_password_hash is None:
        fail(
            "BONESCAN_REVIEW_PASSWORD_HASH is not set: the review page needs a login; "
            "make a hash with `bonescan review-server hash-password`"
        )
    try:
        password = PasswordHash.parse(settings.review_password_hash.get_secret_value())
    except PasswordHashError as error:
        fail(f"BONESCAN_REVIEW_PASSWORD_HASH: {error}")
    try:
        engine = make_engine(settings.database_url)
    except ValueError as error:
        fail(f"database {display_url(settings.database_url)}: {error}")
    bind_host = host or settings.review.host
    bind_port = port or settings.review.port
    review_app = ReviewApp(make_session_factory(engine), password)
    if settings.review.metrics_port is not None:
        review_app.metrics.serve(bind_host, settings.review.metrics_port)
    typer.echo(
        f"bonescan review-server: http://{bind_host}:{bind_port}/ "
        f"(database {display_url(settings.database_url)}); Ctrl-C stops"
    )
    try:
        serve(review_app, bind_host, bind_port)
    except OSError as error:
        fail(f"cannot listen on {bind_host}:{bind_port}: {error.strerror or error}")
    finally:
        engine.dispose()


@app.command("hash-password")
def hash_password() -> None:
    """Print a BONESCAN_REVIEW_PASSWORD_HASH line for a password (typed twice, or from stdin)."""
    from pipeline.review_web.auth import hash_password as make_hash  # noqa: PLC0415

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        fail("the password must have at least 8 characters")
    typer.echo(make_hash(password))
