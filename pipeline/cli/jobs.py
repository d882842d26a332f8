"""``bonescan jobs``: list and inspect jobs, and reprocess series (a new job generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.admin import (
    JsonOption,
    LimitOption,
    NoPhiOption,
    actor,
    duration,
    ids_text,
    parse_date,
    parse_id,
    parse_since,
    parse_state,
    print_json,
    send_tasks,
    sessions,
    show_table,
    text,
    warn,
)
from pipeline.cli.common import fail, settings_or_exit
from pipeline.cli.studies import lesions
from pipeline.db import admin, filing, queries
from pipeline.db.states import JobState
from pipeline.model_version import current_model_version
from pipeline.settings import Settings
from pipeline.tasks.names import QueueName, TaskName

app = typer.Typer(help="Processing jobs: list, show, reprocess.", no_args_is_help=True)

StateOption = Annotated[
    str | None,
    typer.Option("--state", help="Only jobs in this state (received, queued, …, export_failed)."),
]


@app.command("list")
def list_jobs(
    *,
    state: StateOption = None,
    since: Annotated[
        str | None,
        typer.Option(help="Created since DATE (2024-05-01) or DURATION ago (2h, 3d)."),
    ] = None,
    calling_ae: Annotated[
        str | None, typer.Option("--calling-ae", help="Only scans sent by this AE title.")
    ] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
    no_phi: NoPhiOption = False,
) -> None:
    """List jobs, newest first."""
    settings = settings_or_exit()
    wanted = parse_state(state, JobState, "job")
    cutoff = parse_since(since)
    with sessions(settings) as factory, factory() as session:
        rows = queries.list_jobs(
            session, state=wanted, since=cutoff, calling_ae_title=calling_ae, limit=limit
        )
    if as_json:
        print_json(rows, no_phi=no_phi)
        return
    show_table(
        None,
        [
            ("job", lambda j: j.id),
            ("state", lambda j: j.state),
            ("patient name", lambda j: j.patient_name),
            ("patient ID", lambda j: j.patient_id),
            ("series UID", lambda j: j.series_instance_uid),
            ("from AE", lambda j: ", ".join(j.calling_ae_titles)),
            ("gen.", lambda j: j.generation),
            ("model", lambda j: j.model_version),
            ("lesions", lambda j: lesions(j.lesions)),
            ("created", lambda j: j.created_at),
            ("updated", lambda j: j.updated_at),
            ("error", lambda j: j.error),
        ],
        rows,
        no_phi=no_phi,
    )


@app.command("show")
def show_job(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    as_json: JsonOption = False,
    no_phi: NoPhiOption = False,
) -> None:
    """Show a job: events with per-stage durations, results, lesions, exports and reviews."""
    settings = settings_or_exit()
    number = parse_id(job_id, "job id")
    with sessions(settings) as factory, factory() as session:
        detail = queries.job_detail(session, number)
    if detail is None:
        fail(f"no job with id {number}")
    if as_json:
        print_json(detail, no_phi=no_phi)
        return
    _print_job(detail, no_phi=no_phi)


def _print_job(detail: queries.JobDetail, *, no_phi: bool) -> None:
    job = detail.job
    typer.echo(f"job {job.id}: {job.state} (generation {job.generation}, {job.attempts} attempts)")
    typer.echo(f"study      {job.study_instance_uid}")
    if not no_phi:
        typer.echo(f"patient    {text(job.patient_name)} ({text(job.patient_id)})")
    typer.echo(f"series     {job.series_instance_uid} from {', '.join(job.calling_ae_titles)}")
    typer.echo(f"model      {job.model_version} (weights {text(detail.weights_path)})")
    if job.error:
        typer.echo(f"error      {job.error}")
    show_table(
        "events",
        [
            ("at", lambda e: e.at),
            ("from", lambda e: e.from_state),
            ("to", lambda e: e.to_state),
            ("stage", lambda e: e.stage),
            ("after", lambda e: duration(e.since_previous_s)),
            ("detail", lambda e: e.detail),
        ],
        detail.events,
    )
    show_table(
        "stage durations",
        [("stage", lambda s: s[0]), ("duration", lambda s: duration(s[1]))],
        list(detail.stage_durations_s.items()),
    )
    _print_results(detail)
    show_table(
        "exports",
        [
            ("export", lambda x: x.id),
            ("destination", lambda x: x.destination),
            ("object", lambda x: object_kind(x.sop_class_uid)),
            ("state", lambda x: x.state),
            ("attempts", lambda x: x.attempts),
            ("next attempt", lambda x: x.next_attempt_at),
            ("delivered", lambda x: x.delivered_at),
            ("last error", lambda x: x.last_error),
        ],
        detail.exports,
    )
    show_table(
        "reviews",
        [
            ("at", lambda r: r.reviewed_at),
            ("verdict", lambda r: r.state),
            ("reviewer", lambda r: r.reviewer),
            ("comment", lambda r: r.comment),
        ],
        detail.reviews,
    )


def _print_results(detail: queries.JobDetail) -> None:
    show_table(
        "results",
        [
            ("view", lambda r: r.view),
            ("lesions", lambda r: r.lesion_count),
            ("area mm²", lambda r: r.lesion_area_mm2),
            ("superseded", lambda r: "yes" if r.superseded else ""),
            ("SEG SOP Instance UID", lambda r: r.seg_sop_instance_uid),
            ("SEG file", lambda r: r.seg_path),
            ("SR file", lambda r: r.sr_path),
        ],
        detail.results,
    )
    show_table(
        "lesions",
        [
            ("view", lambda pair: pair[0]),
            ("label", lambda pair: pair[1].label),
            ("area mm²", lambda pair: pair[1].area_mm2),
            (
                "centroid (row, col)",
                lambda p: f"{p[1].centroid_row:.0f}, {p[1].centroid_column:.0f}",
            ),
            ("max p", lambda pair: f"{pair[1].max_probability:.2f}"),
        ],
        [(result.view, lesion) for result in detail.results for lesion in result.lesions],
    )


def object_kind(sop_class_uid: str) -> str:
    """``SEG`` / ``SR`` for the classes bonescan exports, else the UID."""
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.66."):
        return "SEG"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88."):
        return "SR"
    return sop_class_uid


def _model(settings: Settings, weights: Path | None) -> tuple[str, str | None]:
    """The model version and stored weights path for new jobs (``--weights`` or the setting)."""
    if weights is None:
        return current_model_version(settings), None
    if not weights.is_file():
        fail(f"--weights: no checkpoint file at {weights}")
    path = weights.resolve()
    return current_model_version(settings.model_copy(update={"weights": path})), str(path)


@app.command("reprocess")
def reprocess(
    *,
    study: Annotated[
        str | None, typer.Option("--study", help="Every series of this Study Instance UID.")
    ] = None,
    series: Annotated[
        str | None, typer.Option("--series", help="This Series Instance UID.")
    ] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="Series whose newest job is in this state.")
    ] = None,
    created_from: Annotated[
        str | None, typer.Option("--from", help="Series whose newest job was created from DATE.")
    ] = None,
    created_to: Annotated[
        str | None, typer.Option("--to", help="… up to DATE (a bare date includes that day).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Checkpoint to reprocess with (a new model).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be reprocessed; change nothing.")
    ] = False,
) -> None:
    """Open a new job (next generation) for each selected series and queue it.

    Filters combine with AND. Old results are kept; the new result supersedes them.
    """
    settings = settings_or_exit()
    selection = admin.ReprocessSelection(
        study_instance_uid=study,
        series_instance_uid=series,
        state=parse_state(state, JobState, "job"),
        created_from=None if created_from is None else parse_date(created_from, "--from"),
        created_to=None if created_to is None else parse_date(created_to, "--to", end_of_day=True),
    )
    model_version, weights_path = _model(settings, weights)
    who = actor()
    with sessions(settings) as factory:
        with factory.begin() as session:
            plan = admin.plan_reprocess(session, selection)
            _refuse_empty(plan)
            job_ids = (
                []
                if dry_run
                else admin.reprocess(
                    session,
                    plan.items,
                    model_version=model_version,
                    weights_path=weights_path,
                    actor=who,
                )
            )
        _print_plan(plan, model_version, job_ids)
        if dry_run:
            typer.echo(f"dry run: {len(plan.items)} series would be reprocessed; nothing changed")
            return
        outcome = send_tasks(
            settings, TaskName.SEGMENT_SERIES, QueueName.SEGMENT, "job_id", job_ids
        )
        with factory.begin() as session:
            detail = f"sent {TaskName.SEGMENT_SERIES.value} by {who}"
            filing.mark_queued(session.connection(), outcome.sent, detail)
    typer.echo(f"reprocessing {len(job_ids)} series with {model_version}: jobs {ids_text(job_ids)}")
    if outcome.error is not None:
        unsent = [job_id for job_id in job_ids if job_id not in outcome.sent]
        warn(
            f"{outcome.error}; jobs {ids_text(unsent)} stay received "
            "(the listener's sweeper offers them again once the broker is back)"
        )


def _refuse_empty(plan: admin.ReprocessPlan) -> None:
    if plan.items:
        return
    if not plan.left_out:
        fail("nothing to reprocess: no series matches the selection")
    uid, reason = plan.left_out[0]
    more = f" (and {len(plan.left_out) - 1} more)" if len(plan.left_out) > 1 else ""
    fail(f"nothing to reprocess: series {uid}: {reason}{more}")


def _print_plan(plan: admin.ReprocessPlan, model_version: str, job_ids: list[int]) -> None:
    new = dict(zip((item.series_id for item in plan.items), job_ids, strict=False))
    show_table(
        None,
        [
            ("series UID", lambda i: i.series_instance_uid),
            ("study UID", lambda i: i.study_instance_uid),
            ("previous job", lambda i: f"{i.previous_job_id} ({i.previous_state})"),
            ("previous model", lambda i: i.previous_model_version),
            ("new gen.", lambda i: i.generation),
            ("new model", lambda _: model_version),
            ("new job", lambda i: new.get(i.series_id, "-")),
        ],
        plan.items,
    )
    for uid, reason in plan.left_out:
        typer.echo(f"left out series {uid}: {reason}")
