"""``bonescan peers``: the configured DICOM destinations, and a C-ECHO to one of them."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from pipeline.cli.admin import JsonOption, print_json, show_table
from pipeline.cli.common import fail, settings_or_exit

app = typer.Typer(
    help="DICOM destinations (BONESCAN_DESTINATIONS): list, echo.", no_args_is_help=True
)


@app.command("list")
def list_peers(as_json: JsonOption = False) -> None:
    """List the configured destinations."""
    destinations = settings_or_exit().destinations
    if as_json:
        print_json([destination.model_dump() for destination in destinations])
        return
    show_table(
        None,
        [
            ("name", lambda d: d.name),
            ("AE title", lambda d: d.ae_title),
            ("host", lambda d: d.host),
            ("port", lambda d: d.port),
            ("verify", lambda d: "yes" if d.verify else "no"),
        ],
        destinations,
    )


@app.command("echo")
def echo(
    name: Annotated[str, typer.Argument(help="Destination name.")],
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per network step.")] = 5.0,
) -> None:
    """C-ECHO a destination from our AE title; exit 1 with the reason when it fails."""
    settings = settings_or_exit()
    try:
        destination = settings.destination(name)
    except KeyError as error:
        fail(str(error.args[0]))
    from pipeline.dicom.scu import echo as c_echo  # noqa: PLC0415  (pynetdicom: only when used)

    # pynetdicom logs a refused connection at ERROR; the reason is our one line below.
    pynetdicom_logger = logging.getLogger("pynetdicom")
    level = pynetdicom_logger.level
    pynetdicom_logger.setLevel(logging.CRITICAL)
    try:
        result = c_echo(destination, settings.listener.ae_title, timeout_s=timeout)
    finally:
        pynetdicom_logger.setLevel(level)
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    if not result.ok:
        fail(f"{where}: {result.detail}")
    typer.echo(f"{where}: {result.detail}")
