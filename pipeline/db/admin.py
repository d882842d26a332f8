"""Write-side admin actions: reprocess, export retry, review, purge; each one audited.

Plain functions over a caller's :class:`~sqlalchemy.orm.Session`; the caller owns the
transaction, so the change and its :class:`~pipeline.db.models.AuditEvent` commit together or
not at all. Tasks are sent by the caller *after* the commit (warehouse manner), never here.
Audit details are JSON with UIDs, ids, states and versions only: no patient data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, selectinload

from pipeline.db.ingest import open_job, record_event, series_candidates
from pipeline.db.models import AuditEvent, Export, Instance, Job, Result, Review, Series, Study
from pipeline.db.states import (
    TERMINAL_JOB_STATES,
    ExportState,
    InvalidTransitionError,
    JobState,
    ReviewState,
)

# A job in one of these is still moving: reprocessing its series would race it.
IN_FLIGHT = frozenset({JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING})


class AdminError(ValueError):
    """An admin action that cannot be done as asked; ``str()`` is one line for the user."""


def audit(
    session: Session,
    actor: str,
    action: str,
    *,
    target: tuple[str, object],
    detail: dict[str, Any],
) -> AuditEvent:
    """Add an audit row to the caller's transaction: ``target`` is (type, id), e.g.
    ``("job", 12)``; ``detail`` must hold no patient data."""
    event = AuditEvent(
        actor=actor[:128],
        action=action,
        target_type=target[0],
        target_id=str(target[1]),
        detail=json.dumps(detail, sort_keys=True, default=str),
    )
    session.add(event)
    return event


def job_or_error(session: Session, job_id: int) -> Job:
    """The job ``job_id``, or :class:`AdminError` naming it."""
    job = session.get(Job, job_id)
    if job is None:
        raise AdminError(f"no job with id {job_id}")
    return job


# ---------------------------------------------------------------------------------------------
# Reprocess


@dataclass(frozen=True)
class ReprocessSelection:
    """Which series to reprocess; filters combine with AND, at least one must be given.

    ``state``, ``created_from`` and ``created_to`` apply to each series' newest job (the
    current generation): ``--state failed`` reprocesses series whose latest attempt failed.
    """

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    state: JobState | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    @property
    def empty(self) -> bool:
        return all(value is None for value in vars(self).values())


@dataclass(frozen=True)
class ReprocessItem:
    """One series to reprocess: its newest job and the generation the new job gets."""

    series_id: int
    series_instance_uid: str
    study_instance_uid: str
    previous_job_id: int
    previous_state: str
    previous_model_version: str
    generation: int


@dataclass(frozen=True)
class ReprocessPlan:
    """The series that will get a new job, and those left out with the reason."""

    items: list[ReprocessItem]
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (series UID, reason)


def plan_reprocess(session: Session, selection: ReprocessSelection) -> ReprocessPlan:
    """The series ``selection`` matches, each with its newest job; changes nothing.

    Series whose newest job is still in flight (received, queued, running) or that hold no
    whole-body bone scan instance (skipped series) are left out, with the reason.
    """
    if selection.empty:
        raise AdminError("choose what to reprocess: --study, --series, --state or --from/--to")
    newest = (
        select(Job.series_id, func.max(Job.id).label("job_id")).group_by(Job.series_id).subquery()
    )
    query = (
        select(Job, Series, Study)
        .join(newest, newest.c.job_id == Job.id)
        .join(Series, Series.id == Job.series_id)
        .join(Study, Study.id == Series.study_id)
        .order_by(Job.id)
    )
    if selection.study_instance_uid is not None:
        query = query.where(Study.study_instance_uid == selection.study_instance_uid)
    if selection.series_instance_uid is not None:
        query = query.where(Series.series_instance_uid == selection.series_instance_uid)
    if selection.state is not None:
        query = query.where(Job.state == selection.state)
    if selection.created_from is not None:
        query = query.where(Job.created_at >= selection.created_from)
    if selection.created_to is not None:
        query = query.where(Job.created_at < selection.created_to)
    plan = ReprocessPlan(items=[])
    for job, series, study in session.execute(query).all():
        reason = _left_out_reason(session, job, series)
        if reason is not None:
            plan.left_out.append((series.series_instance_uid, reason))
            continue
        generation = session.scalar(
            select(func.max(Job.generation)).where(Job.series_id == series.id)
        )
        plan.items.append(
            ReprocessItem(
                series_id=series.id,
                series_instance_uid=series.series_instance_uid,
                study_instance_uid=study.study_instance_uid,
                previous_job_id=job.id,
                previous_state=str(job.state),
                previous_model_version=job.model_version,
                generation=(generation or 0) + 1,
            )
        )
    return plan


def _left_out_reason(session: Session, job: Job, series: Series) -> str | None:
    if job.state in IN_FLIGHT:
        return f"job {job.id} is still {job.state}"
    if not series_candidates(session, series.id):
        return "no whole-body bone scan instance (skipped series)"
    return None


def reprocess(
    session: Session,
    items: Sequence[ReprocessItem],
    *,
    model_version: str,
    weights_path: str | None,
    actor: str,
) -> list[int]:
    """Open a ``received`` job of the planned generation for each item; return their ids.

    The idempotency key includes the generation, so the new job never collides with the old
    ones; old results are kept (the worker marks them superseded when the new one is written).
    """
    job_ids: list[int] = []
    for item in items:
        series = session.get_one(Series, item.series_id)
        job = open_job(
            session,
            series,
            series_candidates(session, series.id),
            model_version,
            generation=item.generation,
            detail=f"reprocess of job {item.previous_job_id} by {actor}",
        )
        if job is None:  # the same generation was opened meanwhile
            raise AdminError(
                f"series {item.series_instance_uid} already has a generation "
                f"{item.generation} job for {model_version}; run the command again"
            )
        job.weights_path = weights_path
        session.flush()
        audit(
            session,
            actor,
            "jobs.reprocess",
            target=("job", job.id),
            detail={
                "previous_job_id": item.previous_job_id,
                "previous_state": item.previous_state,
                "series_instance_uid": item.series_instance_uid,
                "generation": item.generation,
                "model_version": model_version,
                "weights_path": weights_path,
            },
        )
        job_ids.append(job.id)
    return job_ids


# ---------------------------------------------------------------------------------------------
# Export retry

RETRYABLE_EXPORTS = frozenset({ExportState.FAILED, ExportState.PENDING})


def failed_export_ids(session: Session) -> list[int]:
    """Every export in state ``failed``, oldest first."""
    return list(
        session.scalars(
            select(Export.id).where(Export.state == ExportState.FAILED).order_by(Export.id)
        )
    )


def retry_exports(session: Session, export_ids: Iterable[int], *, actor: str) -> list[int]:
    """Put failed exports back to ``pending`` (attempts reset) and their jobs back to
    ``segmented``; return the ids whose task the caller must send.

    A ``pending`` export is returned unchanged (its task is sent again, e.g. after the broker
    was down); any other state is refused, naming the export.
    """
    wanted = sorted(set(export_ids))
    if not wanted:
        raise AdminError("no export to retry: give export ids or --all-failed")
    exports = {
        export.id: export
        for export in session.scalars(
            select(Export).where(Export.id.in_(wanted)).options(selectinload(Export.job))
        )
    }
    missing = [str(export_id) for export_id in wanted if export_id not in exports]
    if missing:
        raise AdminError(f"no export with id {', '.join(missing)}")
    for export_id in wanted:
        _retry_one(session, exports[export_id], actor)
    return wanted


def _retry_one(session: Session, export: Export, actor: str) -> None:
    if export.state not in RETRYABLE_EXPORTS:
        raise AdminError(
            f"export {export.id} is {export.state}; only failed or pending exports are retried"
        )
    job = export.job
    detail: dict[str, Any] = {
        "job_id": job.id,
        "destination": export.destination,
        "sop_instance_uid": export.sop_instance_uid,
        "previous_state": str(export.state),
        "previous_attempts": export.attempts,
        "previous_job_state": str(job.state),
    }
    if job.state != JobState.SEGMENTED:
        try:
            record_event(session, job, JobState.SEGMENTED, f"export {export.id} retried by {actor}")
        except InvalidTransitionError:
            raise AdminError(
                f"export {export.id}: its job {job.id} is {job.state} and cannot go back to "
                "segmented"
            ) from None
        job.error = None
    if export.state == ExportState.FAILED:
        detail["previous_error"] = export.last_error
        export.state = ExportState.PENDING
        export.attempts = 0
        export.next_attempt_at = None
        export.last_error = None
    audit(session, actor, "exports.retry", target=("export", export.id), detail=detail)


# ---------------------------------------------------------------------------------------------
# Review


def add_review(
    session: Session, job_id: int, state: ReviewState, *, reviewer: str, comment: str | None
) -> Review:
    """Record a radiologist's verdict on a job that has a result."""
    job = job_or_error(session, job_id)
    has_result = session.scalar(select(func.count(Result.id)).where(Result.job_id == job.id))
    if not has_result:
        raise AdminError(f"job {job_id} has no result to review (state {job.state})")
    review = Review(job_id=job.id, state=state, reviewer=reviewer[:128], comment=comment)
    session.add(review)
    session.flush()
    audit(
        session,
        reviewer,
        f"review.{'accept' if state == ReviewState.ACCEPTED else 'reject'}",
        target=("job", job.id),
        detail={"review_id": review.id, "state": str(state), "generation": job.generation},
    )
    return review


# ---------------------------------------------------------------------------------------------
# Purge


@dataclass(frozen=True)
class PurgeStudy:
    """A study whose files and rows a purge removes (or keeps, with ``unreviewed_job_ids``)."""

    study_id: int
    study_instance_uid: str
    job_ids: list[int]
    paths: list[str]
    unreviewed_job_ids: list[int]


@dataclass(frozen=True)
class PurgePlan:
    """What a purge removes, and the old studies it keeps because work is unreviewed."""

    purge: list[PurgeStudy]
    kept: list[PurgeStudy]


def _old_terminal_study_ids(
    session: Session, cutoff: datetime, study_id: int | None = None
) -> list[int]:
    """Studies with at least one job, every job terminal and unchanged since before ``cutoff``,
    and nothing received since (only ``study_id`` when given)."""
    terminal = [state.value for state in TERMINAL_JOB_STATES]
    young_or_open = (
        select(Job.id)
        .join(Series, Series.id == Job.series_id)
        .where(
            Series.study_id == Study.id,
            (Job.state.not_in(terminal)) | (Job.updated_at >= cutoff),
        )
        .exists()
    )
    recent_instance = (
        select(Instance.id)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == Study.id, Instance.received_at >= cutoff)
        .exists()
    )
    has_job = (
        select(Job.id).join(Series, Series.id == Job.series_id).where(Series.study_id == Study.id)
    ).exists()
    query = select(Study.id).where(
        has_job, ~young_or_open, ~recent_instance, Study.created_at < cutoff
    )
    if study_id is not None:
        query = query.where(Study.id == study_id)
    return list(session.scalars(query.order_by(Study.id)))


def _unreviewed(job: Job) -> bool:
    # Results superseded by a newer generation are covered by that generation's review.
    current = [result for result in job.results if not result.superseded]
    return bool(current) and not job.reviews


def plan_purge(session: Session, cutoff: datetime, *, force: bool = False) -> PurgePlan:
    """Studies old enough to purge and the files they own (spool, SEG/SR results, exports).

    Without ``force`` a study with a job whose current results have no review is kept.
    Changes nothing.
    """
    plan = PurgePlan(purge=[], kept=[])
    for study_id in _old_terminal_study_ids(session, cutoff):
        study = session.get_one(Study, study_id)
        jobs = session.scalars(
            select(Job)
            .join(Series, Series.id == Job.series_id)
            .where(Series.study_id == study_id)
            .options(
                selectinload(Job.results), selectinload(Job.exports), selectinload(Job.reviews)
            )
            .order_by(Job.id)
        ).all()
        paths = list(
            session.scalars(
                select(Instance.spool_path)
                .join(Series, Series.id == Instance.series_id)
                .where(Series.study_id == study_id)
            )
        )
        for job in jobs:
            paths += [result.seg_path for result in job.results]
            paths += [result.sr_path for result in job.results if result.sr_path]
            paths += [export.path for export in job.exports]
        entry = PurgeStudy(
            study_id=study_id,
            study_instance_uid=study.study_instance_uid,
            job_ids=[job.id for job in jobs],
            paths=list(dict.fromkeys(path for path in paths if path)),
            unreviewed_job_ids=[job.id for job in jobs if _unreviewed(job)],
        )
        (plan.kept if entry.unreviewed_job_ids and not force else plan.purge).append(entry)
    return plan


@dataclass
class FileRemoval:
    """What removing a purge's files did."""

    removed: int = 0
    bytes: int = 0
    missing: int = 0
    outside: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def remove_files(paths: Iterable[str], data_dir: Path) -> FileRemoval:
    """Unlink each regular file under ``data_dir``; files elsewhere are left alone and listed.

    Relative paths are taken from the working directory, as the listener and workers stored
    them. Folders left empty are removed up to (not including) ``data_dir``'s top folders.
    """
    root = data_dir.resolve()
    keep = {root, root / "spool", root / "results"}
    outcome = FileRemoval()
    for text in paths:
        path = Path(text).resolve()
        if not path.is_relative_to(root):
            outcome.outside.append(text)
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            outcome.missing += 1
            continue
        except OSError as error:
            outcome.failed.append(f"{text}: {error.strerror or error}")
            continue
        outcome.removed += 1
        outcome.bytes += size
        _remove_empty_parents(path.parent, root, keep)
    return outcome


def _remove_empty_parents(folder: Path, root: Path, keep: set[Path]) -> None:
    while folder not in keep and folder.is_relative_to(root):
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or gone): stop climbing
            return
        folder = folder.parent


def purge_study(
    session: Session,
    study: PurgeStudy,
    cutoff: datetime,
    *,
    data_dir: Path,
    actor: str,
    detail: dict[str, Any],
) -> FileRemoval | None:
    """Remove one planned study: its files first, then its rows (series, instances, jobs and
    everything under them cascade), audited; None if it changed since it was planned.

    Files go first: a spool file whose row is gone would be taken for a lost arrival and
    ingested again by the listener's sweeper; a row whose file is gone is merely reported.
    """
    if not _old_terminal_study_ids(session, cutoff, study.study_id):
        return None
    files = remove_files(study.paths, data_dir)
    audit(
        session,
        actor,
        "purge",
        target=("study", study.study_instance_uid),
        detail={
            **detail,
            "job_ids": study.job_ids,
            "files_removed": files.removed,
            "files_missing": files.missing,
            "files_outside_data_dir": len(files.outside),
        },
    )
    # ON DELETE CASCADE in the schema removes series, instances, jobs and their children.
    session.execute(delete(Study).where(Study.id == study.study_id))
    return files
