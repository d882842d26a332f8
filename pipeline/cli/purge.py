"""``bonescan purge``: remove old, finished studies: spool and result files, then their rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from pipeline.cli.admin import actor, ids_text, parse_duration, sessions, warn
from pipeline.cli.common import settings_or_exit
from pipeline.db import admin


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Studies whose jobs all ended more than DURATION ago (30d)."
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Purge results nobody has reviewed, too.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be removed; change nothing.")
    ] = False,
) -> None:
    """Delete old finished studies: spool files, result files and rows.

    A study is purged when all its jobs are finished (exported, skipped, failed) and unchanged
    for longer than --older-than. Never a study with a job still in progress or export_failed;
    never one with unreviewed results unless --force. Only files under BONESCAN_DATA_DIR are
    deleted.
    """
    settings = settings_or_exit()
    cutoff = datetime.now(UTC) - parse_duration(older_than, "--older-than")
    who = actor()
    with sessions(settings) as factory:
        with factory() as session:
            plan = admin.plan_purge(session, cutoff, force=force)
        for kept in plan.kept:
            typer.echo(
                f"kept study {kept.study_instance_uid}: jobs {ids_text(kept.unreviewed_job_ids)} "
                "have results without a review (--force purges them)"
            )
        if not plan.purge:
            typer.echo(f"nothing to purge older than {older_than}")
            return
        if dry_run:
            for study in plan.purge:
                typer.echo(
                    f"would remove study {study.study_instance_uid}: {len(study.job_ids)} jobs, "
                    f"{len(study.paths)} files"
                )
            typer.echo(f"dry run: {len(plan.purge)} studies would be purged; nothing changed")
            return
        total = admin.FileRemoval()
        studies = 0
        for study in plan.purge:
            with factory.begin() as session:
                files = admin.purge_study(
                    session,
                    study,
                    cutoff,
                    data_dir=settings.data_dir,
                    actor=who,
                    detail={"older_than": older_than, "force": force},
                )
            if files is None:
                typer.echo(f"skipped study {study.study_instance_uid}: it changed meanwhile")
                continue
            studies += 1
            typer.echo(
                f"removed study {study.study_instance_uid}: {len(study.job_ids)} jobs, "
                f"{files.removed} files ({_size(files.bytes)})"
            )
            total.removed += files.removed
            total.bytes += files.bytes
            total.missing += files.missing
            total.outside += files.outside
            total.failed += files.failed
    _summary(studies, total)


def _summary(studies: int, total: admin.FileRemoval) -> None:
    typer.echo(
        f"purged {studies} studies: {total.removed} files removed ({_size(total.bytes)}), "
        f"{total.missing} already gone"
    )
    if total.outside:
        first = total.outside[0]
        warn(f"{len(total.outside)} files outside BONESCAN_DATA_DIR left in place: {first} …")
    for failure in total.failed:
        warn(f"could not remove {failure}")
