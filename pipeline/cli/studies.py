"""``bonescan studies``: the studies received, and one study with its series and jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.admin import (
    JsonOption,
    LimitOption,
    NoPhiOption,
    parse_since,
    print_json,
    sessions,
    show_table,
    text,
)
from pipeline.cli.common import fail, settings_or_exit
from pipeline.db import queries

app = typer.Typer(
    help="Received studies: list them, show one with its series and jobs.", no_args_is_help=True
)


def study_date(value: str | None) -> str | None:
    """DICOM DA ``20240501`` as ``2024-05-01`` (anything else as received)."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def lesions(counts: dict[str, int]) -> str:
    """``anterior 3, posterior 1`` (``-`` before the job is segmented)."""
    return ", ".join(f"{view} {count}" for view, count in sorted(counts.items())) or "-"


@app.command("list")
def list_studies(
    since: Annotated[
        str | None,
        typer.Option(help="Received since DATE (2024-05-01) or DURATION ago (2h, 3d)."),
    ] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
    no_phi: NoPhiOption = False,
) -> None:
    """List studies, newest first, with series and job counts and the newest job's state."""
    settings = settings_or_exit()
    cutoff = parse_since(since)
    with sessions(settings) as factory, factory() as session:
        rows = queries.list_studies(session, since=cutoff, limit=limit)
    if as_json:
        print_json(rows, no_phi=no_phi)
        return
    show_table(
        None,
        [
            ("study UID", lambda r: r.study_instance_uid),
            ("patient name", lambda r: r.patient_name),
            ("patient ID", lambda r: r.patient_id),
            ("date", lambda r: study_date(r.study_date)),
            ("description", lambda r: r.study_description),
            ("series", lambda r: r.series),
            ("jobs", lambda r: r.jobs),
            ("latest job", lambda r: r.latest_job_state),
            ("received", lambda r: r.received_at),
        ],
        rows,
        no_phi=no_phi,
    )


@app.command("show")
def show_study(
    study_instance_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    as_json: JsonOption = False,
    no_phi: NoPhiOption = False,
) -> None:
    """Show a study: its series, and every job with its state and lesion counts per view."""
    settings = settings_or_exit()
    with sessions(settings) as factory, factory() as session:
        detail = queries.study_detail(session, study_instance_uid.strip())
    if detail is None:
        fail(f"no study with UID {study_instance_uid}")
    if as_json:
        print_json(detail, no_phi=no_phi)
        return
    typer.echo(f"study      {detail.study_instance_uid}")
    if not no_phi:
        typer.echo(f"patient    {text(detail.patient_name)} ({text(detail.patient_id)})")
    typer.echo(f"date       {text(study_date(detail.study_date))}")
    typer.echo(f"desc.      {text(detail.study_description)}")
    typer.echo(f"received   {text(detail.received_at)}")
    show_table(
        "series",
        [
            ("series UID", lambda s: s.series_instance_uid),
            ("number", lambda s: s.series_number),
            ("modality", lambda s: s.modality),
            ("description", lambda s: s.series_description),
            ("instances", lambda s: s.instances),
            ("from AE", lambda s: ", ".join(s.calling_ae_titles)),
        ],
        detail.series,
    )
    show_table(
        "jobs",
        [
            ("job", lambda j: j.id),
            ("series UID", lambda j: j.series_instance_uid),
            ("gen.", lambda j: j.generation),
            ("model", lambda j: j.model_version),
            ("state", lambda j: j.state),
            ("lesions", lambda j: lesions(j.lesions)),
            ("superseded", lambda j: "yes" if j.superseded else ""),
            ("updated", lambda j: j.updated_at),
            ("error", lambda j: j.error),
        ],
        detail.jobs,
    )
