"""Read-side queries for the admin CLI: studies, jobs, exports and statistics as plain rows.

Every function takes the caller's :class:`~sqlalchemy.orm.Session` and returns frozen
dataclasses, so the CLI renders them as tables or JSON without touching ORM objects after the
session is closed. Patient name and ID are returned (the database is clinical data and the
worklist needs them); the CLI hides them on request and never logs them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby, pairwise
from typing import Any, NamedTuple

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from pipeline.db.models import Export, Instance, Job, JobEvent, Result, Series, Study
from pipeline.db.states import ExportState, JobState, Stage

# The main path a job walks; per-stage latency is measured between consecutive states of it.
LATENCY_CHAIN: tuple[JobState, ...] = (
    JobState.RECEIVED,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SEGMENTED,
    JobState.EXPORTED,
)
TOTAL_STAGE = "received→exported"


def stage_name(start: JobState, end: JobState) -> str:
    """``received→queued``: the key of a per-stage duration."""
    return f"{start.value}→{end.value}"


STAGES: tuple[str, ...] = (
    *(stage_name(a, b) for a, b in pairwise(LATENCY_CHAIN)),
    TOTAL_STAGE,
)


@dataclass(frozen=True)
class StudyRow:
    """One line of ``studies list``."""

    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    series: int
    jobs: int
    latest_job_state: str | None
    received_at: datetime


@dataclass(frozen=True)
class SeriesRow:
    """One series of a study, with how many instances arrived."""

    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    instances: int
    calling_ae_titles: list[str]


@dataclass(frozen=True)
class JobRow:
    """One line of ``jobs list`` (and a job of ``studies show``)."""

    id: int
    study_instance_uid: str
    series_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    generation: int
    model_version: str
    state: str
    attempts: int
    error: str | None
    calling_ae_titles: list[str]
    created_at: datetime
    updated_at: datetime
    # Lesion count per view over this job's own results (empty before it is segmented).
    lesions: dict[str, int] = field(default_factory=dict)
    superseded: bool = False


@dataclass(frozen=True)
class StudyDetail:
    """``studies show``: the study, its series and every job over them."""

    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    received_at: datetime
    series: list[SeriesRow]
    jobs: list[JobRow]


@dataclass(frozen=True)
class EventRow:
    """One job event; ``since_previous_s`` is the time since the event before it."""

    at: datetime
    from_state: str | None
    to_state: str
    stage: str | None
    detail: str | None
    since_previous_s: float | None


@dataclass(frozen=True)
class LesionRow:
    """One connected component of a view's mask (full-frame pixel coordinates, row/column)."""

    label: int
    area_px: int
    area_mm2: float
    centroid_row: float
    centroid_column: float
    max_probability: float


@dataclass(frozen=True)
class ResultRow:
    """One view's segmentation of a job."""

    view: str
    lesion_count: int
    lesion_area_mm2: float
    seg_sop_instance_uid: str
    seg_path: str
    sr_sop_instance_uid: str | None
    sr_path: str | None
    superseded: bool
    created_at: datetime
    lesions: list[LesionRow]


@dataclass(frozen=True)
class ExportRow:
    """One delivery of a result object to a destination."""

    id: int
    job_id: int
    destination: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    verified_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class ReviewRow:
    """A radiologist's verdict on a job."""

    state: str
    reviewer: str
    comment: str | None
    reviewed_at: datetime


@dataclass(frozen=True)
class JobDetail:
    """``jobs show``: the job with its events, stage durations, results, exports and reviews."""

    job: JobRow
    weights_path: str | None
    idempotency_key: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    events: list[EventRow]
    stage_durations_s: dict[str, float]
    results: list[ResultRow]
    exports: list[ExportRow]
    reviews: list[ReviewRow]


@dataclass(frozen=True)
class Latency:
    """Percentiles of one stage's duration over the jobs that went through it (seconds)."""

    count: int
    p50_s: float
    p95_s: float


@dataclass(frozen=True)
class Stats:
    """``bonescan stats``: counts per state and per-stage latency percentiles."""

    jobs: dict[str, int]
    exports: dict[str, int]
    latency: dict[str, Latency]


def _calling_ae_titles(session: Session, series_ids: Iterable[int]) -> dict[int, list[str]]:
    rows = session.execute(
        select(Instance.series_id, Instance.calling_ae_title)
        .where(Instance.series_id.in_(set(series_ids)))
        .distinct()
    ).all()
    titles: dict[int, list[str]] = defaultdict(list)
    for series_id, title in rows:
        titles[series_id].append(title)
    return {series_id: sorted(found) for series_id, found in titles.items()}


def _counts(query: Select[int, int], session: Session) -> dict[int, int]:
    return {key: int(count) for key, count in session.execute(query).all()}


def list_studies(
    session: Session, *, since: datetime | None = None, limit: int = 50
) -> list[StudyRow]:
    """The newest studies first (by arrival), with series and job counts and the newest job's
    state."""
    query = select(Study).order_by(Study.created_at.desc(), Study.id.desc()).limit(limit)
    if since is not None:
        query = query.where(Study.created_at >= since)
    studies = session.scalars(query).all()
    ids = [study.id for study in studies]
    series_counts = _counts(
        select(Series.study_id, func.count(Series.id))
        .where(Series.study_id.in_(ids))
        .group_by(Series.study_id),
        session,
    )
    job_counts: Counter[int] = Counter()
    latest: dict[int, str] = {}
    for study_id, state in session.execute(
        select(Series.study_id, Job.state)
        .join(Job, Job.series_id == Series.id)
        .where(Series.study_id.in_(ids))
        .order_by(Job.id)
    ).all():
        job_counts[study_id] += 1
        latest[study_id] = str(state)
    return [
        StudyRow(
            study_instance_uid=study.study_instance_uid,
            patient_name=study.patient_name,
            patient_id=study.patient_id,
            study_date=study.study_date,
            study_description=study.study_description,
            series=series_counts.get(study.id, 0),
            jobs=job_counts[study.id],
            latest_job_state=latest.get(study.id),
            received_at=study.created_at,
        )
        for study in studies
    ]


def _job_row(job: Job, calling_ae_titles: Sequence[str] = ()) -> JobRow:
    series = job.series
    study = series.study
    lesions: dict[str, int] = {}
    for result in job.results:
        lesions[result.view] = result.lesion_count
    return JobRow(
        id=job.id,
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        generation=job.generation,
        model_version=job.model_version,
        state=str(job.state),
        attempts=job.attempts,
        error=job.error,
        calling_ae_titles=list(calling_ae_titles),
        created_at=job.created_at,
        updated_at=job.updated_at,
        lesions=lesions,
        superseded=bool(job.results) and all(result.superseded for result in job.results),
    )


def _with_job_context(query: Select[Job]) -> Select[Job]:
    return query.options(
        selectinload(Job.series).selectinload(Series.study), selectinload(Job.results)
    )


def study_detail(session: Session, study_instance_uid: str) -> StudyDetail | None:
    """The study with ``study_instance_uid``, its series and jobs; None if it is not known."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if study is None:
        return None
    series_list = session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.series_number, Series.id)
    ).all()
    series_ids = [series.id for series in series_list]
    instance_counts = _counts(
        select(Instance.series_id, func.count(Instance.id))
        .where(Instance.series_id.in_(series_ids))
        .group_by(Instance.series_id),
        session,
    )
    titles = _calling_ae_titles(session, series_ids)
    jobs = session.scalars(
        _with_job_context(select(Job).where(Job.series_id.in_(series_ids)).order_by(Job.id))
    ).all()
    return StudyDetail(
        study_instance_uid=study.study_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        study_date=study.study_date,
        study_description=study.study_description,
        received_at=study.created_at,
        series=[
            SeriesRow(
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                series_number=series.series_number,
                series_description=series.series_description,
                instances=instance_counts.get(series.id, 0),
                calling_ae_titles=titles.get(series.id, []),
            )
            for series in series_list
        ],
        jobs=[_job_row(job, titles.get(job.series_id, [])) for job in jobs],
    )


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    since: datetime | None = None,
    calling_ae_title: str | None = None,
    limit: int = 50,
) -> list[JobRow]:
    """The newest jobs first, filtered by state, creation time and the sender's AE title."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    if since is not None:
        query = query.where(Job.created_at >= since)
    if calling_ae_title is not None:
        query = query.where(
            select(Instance.id)
            .where(
                Instance.series_id == Job.series_id,
                Instance.calling_ae_title == calling_ae_title,
            )
            .exists()
        )
    jobs = session.scalars(_with_job_context(query)).all()
    titles = _calling_ae_titles(session, (job.series_id for job in jobs))
    return [_job_row(job, titles.get(job.series_id, [])) for job in jobs]


class Mark(NamedTuple):
    """What :func:`stage_durations` needs of a job event."""

    from_state: JobState | None
    to_state: JobState
    stage: str | None
    at: datetime


def stage_durations(events: Sequence[Mark]) -> dict[str, float]:
    """Seconds spent in each stage of :data:`LATENCY_CHAIN`, from one job's events in order.

    A stage runs from the first event that moves the job into a state to the first that moves
    it into the next one, so a retried job's stage includes its retries. Stage marks within a
    state (from == to) are not entries, nor is the listener's arrival mark (stage
    ``received``), which is dated at the first instance's arrival, possibly long before the job
    was opened (a reprocess). ``received→exported`` is the whole trip.
    """
    first: dict[JobState, datetime] = {}
    for event in events:
        if event.from_state == event.to_state or event.stage == Stage.RECEIVED.value:
            continue
        first.setdefault(event.to_state, event.at)
    durations: dict[str, float] = {}
    for start, end in pairwise(LATENCY_CHAIN):
        if start in first and end in first:
            durations[stage_name(start, end)] = (first[end] - first[start]).total_seconds()
    if JobState.RECEIVED in first and JobState.EXPORTED in first:
        total = first[JobState.EXPORTED] - first[JobState.RECEIVED]
        durations[TOTAL_STAGE] = total.total_seconds()
    return durations


def _events(job: Job) -> list[EventRow]:
    rows: list[EventRow] = []
    previous: datetime | None = None
    for event in sorted(job.events, key=lambda e: (e.at, e.id)):
        since = None if previous is None else (event.at - previous).total_seconds()
        rows.append(
            EventRow(
                at=event.at,
                from_state=None if event.from_state is None else str(event.from_state),
                to_state=str(event.to_state),
                stage=event.stage,
                detail=event.detail,
                since_previous_s=since,
            )
        )
        previous = event.at
    return rows


def _export_row(export: Export) -> ExportRow:
    return ExportRow(
        id=export.id,
        job_id=export.job_id,
        destination=export.destination,
        sop_class_uid=export.sop_class_uid,
        sop_instance_uid=export.sop_instance_uid,
        path=export.path,
        state=str(export.state),
        attempts=export.attempts,
        next_attempt_at=export.next_attempt_at,
        last_error=export.last_error,
        delivered_at=export.delivered_at,
        verified_at=export.verified_at,
        updated_at=export.updated_at,
    )


def _result_row(result: Result) -> ResultRow:
    return ResultRow(
        view=result.view,
        lesion_count=result.lesion_count,
        lesion_area_mm2=result.lesion_area_mm2,
        seg_sop_instance_uid=result.seg_sop_instance_uid,
        seg_path=result.seg_path,
        sr_sop_instance_uid=result.sr_sop_instance_uid,
        sr_path=result.sr_path,
        superseded=result.superseded,
        created_at=result.created_at,
        lesions=[
            LesionRow(
                label=lesion.label,
                area_px=lesion.area_px,
                area_mm2=lesion.area_mm2,
                centroid_row=lesion.centroid_row,
                centroid_column=lesion.centroid_column,
                max_probability=lesion.max_probability,
            )
            for lesion in result.lesions
        ],
    )


def job_detail(session: Session, job_id: int) -> JobDetail | None:
    """Everything about one job; None if there is no job ``job_id``."""
    job = session.scalars(
        _with_job_context(select(Job).where(Job.id == job_id)).options(
            selectinload(Job.events),
            selectinload(Job.results).selectinload(Result.lesions),
            selectinload(Job.exports),
            selectinload(Job.reviews),
        )
    ).one_or_none()
    if job is None:
        return None
    titles = _calling_ae_titles(session, [job.series_id])
    ordered = sorted(job.events, key=lambda e: (e.at, e.id))
    return JobDetail(
        job=_job_row(job, titles.get(job.series_id, [])),
        weights_path=job.weights_path,
        idempotency_key=job.idempotency_key,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        events=_events(job),
        stage_durations_s=stage_durations(
            [Mark(e.from_state, e.to_state, e.stage, e.at) for e in ordered]
        ),
        results=[_result_row(result) for result in job.results],
        exports=[_export_row(export) for export in job.exports],
        reviews=[
            ReviewRow(
                state=str(review.state),
                reviewer=review.reviewer,
                comment=review.comment,
                reviewed_at=review.reviewed_at,
            )
            for review in job.reviews
        ],
    )


def list_exports(
    session: Session, *, state: ExportState | None = None, limit: int = 50
) -> list[ExportRow]:
    """The most recently changed exports first, optionally only those in ``state``."""
    query = select(Export).order_by(Export.updated_at.desc(), Export.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Export.state == state)
    return [_export_row(export) for export in session.scalars(query)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation between ranks (numpy's
    default); ``values`` must not be empty."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _state_counts(session: Session, query: Select[Any, int]) -> dict[str, int]:
    return {str(state): int(count) for state, count in session.execute(query).all()}


def stats(session: Session, *, since: datetime | None = None) -> Stats:
    """Jobs and exports per state, and p50 / p95 of each stage's duration, for the jobs (and
    exports) created since ``since`` (all when None)."""
    job_query = select(Job.state, func.count()).group_by(Job.state)
    export_query = select(Export.state, func.count()).group_by(Export.state)
    if since is not None:
        job_query = job_query.where(Job.created_at >= since)
        export_query = export_query.where(Export.created_at >= since)
    jobs = _state_counts(session, job_query)
    exports = _state_counts(session, export_query)
    query = (
        select(JobEvent.job_id, JobEvent.from_state, JobEvent.to_state, JobEvent.stage, JobEvent.at)
        .join(Job, Job.id == JobEvent.job_id)
        .order_by(JobEvent.job_id, JobEvent.at, JobEvent.id)
    )
    if since is not None:
        query = query.where(Job.created_at >= since)
    samples: dict[str, list[float]] = defaultdict(list)
    for _, rows in groupby(session.execute(query).all(), key=lambda row: row[0]):
        for stage, seconds in stage_durations([Mark(*row[1:]) for row in rows]).items():
            samples[stage].append(seconds)
    latency = {
        stage: Latency(
            len(samples[stage]), percentile(samples[stage], 50), percentile(samples[stage], 95)
        )
        for stage in STAGES
        if samples.get(stage)
    }
    return Stats(
        jobs={state.value: jobs.get(state.value, 0) for state in JobState},
        exports={state.value: exports.get(state.value, 0) for state in ExportState},
        latency=latency,
    )
