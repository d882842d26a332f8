"""``bonescan exports``: deliveries of results to PACS, and retrying the failed ones."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.admin import (
    JsonOption,
    LimitOption,
    actor,
    ids_text,
    parse_id,
    parse_state,
    print_json,
    send_tasks,
    sessions,
    show_table,
    warn,
)
from pipeline.cli.common import fail, settings_or_exit
from pipeline.cli.jobs import object_kind
from pipeline.db import admin, queries
from pipeline.db.states import ExportState
from pipeline.tasks.names import QueueName, TaskName

app = typer.Typer(
    help="Deliveries of SEG / SR results to the destinations: list, retry.", no_args_is_help=True
)


@app.command("list")
def list_exports(
    state: Annotated[
        str | None,
        typer.Option(help="Only exports in this state (pending, sending, delivered, failed)."),
    ] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """List exports, most recently changed first, with attempts and the last error."""
    settings = settings_or_exit()
    wanted = parse_state(state, ExportState, "export")
    with sessions(settings) as factory, factory() as session:
        rows = queries.list_exports(session, state=wanted, limit=limit)
    if as_json:
        print_json(rows)
        return
    show_table(
        None,
        [
            ("export", lambda x: x.id),
            ("job", lambda x: x.job_id),
            ("destination", lambda x: x.destination),
            ("object", lambda x: object_kind(x.sop_class_uid)),
            ("state", lambda x: x.state),
            ("attempts", lambda x: x.attempts),
            ("next attempt", lambda x: x.next_attempt_at),
            ("delivered", lambda x: x.delivered_at),
            ("updated", lambda x: x.updated_at),
            ("last error", lambda x: x.last_error),
        ],
        rows,
    )


@app.command("retry")
def retry(
    export_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Export ids.")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every export in state failed.")
    ] = False,
) -> None:
    """Send failed exports again: back to pending with attempts reset, their job back to
    segmented, and the export task queued. A pending export's task is simply sent again."""
    settings = settings_or_exit()
    if not export_ids and not all_failed:
        fail("say which exports to retry: export ids, or --all-failed")
    wanted = [parse_id(text, "export id") for text in export_ids or []]
    who = actor()
    with sessions(settings) as factory, factory.begin() as session:
        if all_failed:
            wanted += admin.failed_export_ids(session)
            if not wanted:
                fail("no failed exports to retry")
        retried = admin.retry_exports(session, wanted, actor=who)
    outcome = send_tasks(settings, TaskName.EXPORT_RESULT, QueueName.EXPORT, "export_id", retried)
    typer.echo(f"retrying exports {ids_text(retried)}: pending, attempts reset")
    if outcome.error is not None:
        unsent = [export_id for export_id in retried if export_id not in outcome.sent]
        warn(
            f"{outcome.error}; exports {ids_text(unsent)} are pending but not sent: "
            f"run `bonescan exports retry {' '.join(map(str, unsent))}` once it is back"
        )
