"""The ``bonescan`` console command: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from pipeline import __version__
from pipeline.cli import (
    check,
    data,
    db,
    demo,
    exports,
    jobs,
    listen,
    peers,
    purge,
    review,
    review_server,
    segment,
    serve,
    stats,
    studies,
    worker,
)
from pipeline.cli.evaluate import evaluate_command
from pipeline.cli.train import train_command
from pipeline.logs import configure_logging
from pipeline.settings import InvalidSettingsError, get_settings

app = typer.Typer(
    name="bonescan",
    help="bonescan: finds bone metastases in whole-body bone scans and returns DICOM SEG to PACS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _configure() -> None:
    """Configure logging once for whichever command runs (settings errors surface in it)."""
    try:
        settings = get_settings()
    except InvalidSettingsError:
        configure_logging()
        return
    configure_logging(settings.log_level, settings.log_format)


@app.command()
def version() -> None:
    """Print the bonescan version."""
    typer.echo(f"bonescan {__version__}")


# Command groups register here, one line each (module per group, see STYLE.md).
app.command(name="check")(check.check)
app.add_typer(db.app, name="db")
app.add_typer(data.app, name="data")
app.command(name="listen")(listen.listen)
app.command(name="worker")(worker.worker)
app.command(name="serve")(serve.serve)
app.command(name="segment")(segment.segment)
app.command(name="demo")(demo.demo)
app.command(name="train")(train_command)
app.add_typer(studies.app, name="studies")
app.add_typer(jobs.app, name="jobs")
app.add_typer(exports.app, name="exports")
app.add_typer(review.app, name="review")
app.add_typer(review_server.app, name="review-server")
app.add_typer(peers.app, name="peers")
app.command(name="stats")(stats.stats)
app.command(name="purge")(purge.purge)
app.command(name="evaluate")(evaluate_command)


def main() -> None:
    """Console-script entry point."""
    app()
