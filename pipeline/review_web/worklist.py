"""What the review page reads from the tracking database, as frozen rows.

Studies are addressed by their database id (URLs then carry no UIDs and no patient data).
The job a study page reviews is its newest job with current (not superseded) results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from pipeline.db.models import Instance, Job, Result, Review, Series, Study

VIEWS = ("anterior", "posterior")


@dataclass(frozen=True)
class ReviewLine:
    """One accept / reject of a job."""

    state: str
    reviewer: str
    comment: str | None
    reviewed_at: datetime


@dataclass(frozen=True)
class WorklistRow:
    """One study of the worklist: its newest job, that job's lesions per view, its review."""

    study_id: int
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    received_at: datetime
    job_id: int | None
    job_state: str | None
    lesions: dict[str, int]
    review: ReviewLine | None


@dataclass(frozen=True)
class LesionLine:
    """One lesion of a view (full-frame pixels, row / column)."""

    view: str
    label: int
    area_mm2: float
    centroid_row: float
    centroid_column: float
    max_probability: float


@dataclass(frozen=True)
class JobLine:
    """A job of the study with its lesion counts per view and its reviews."""

    id: int
    series_instance_uid: str
    generation: int
    model_version: str
    state: str
    error: str | None
    created_at: datetime
    lesions: dict[str, int]
    superseded: bool
    reviews: list[ReviewLine]


@dataclass(frozen=True)
class StudyPage:
    """Everything the study page shows; ``current`` is the job under review (if any)."""

    study_id: int
    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    received_at: datetime
    jobs: list[JobLine]
    current: JobLine | None
    views: list[str] = field(default_factory=list)
    lesions: list[LesionLine] = field(default_factory=list)


@dataclass(frozen=True)
class OverlaySource:
    """Where one view's pixels and mask are: the source instance (frame) and the SEG file."""

    seg_path: Path
    source_path: Path
    source_sop_instance_uid: str
    source_frame_number: int | None


def _review_line(review: Review) -> ReviewLine:
    return ReviewLine(str(review.state), review.reviewer, review.comment, review.reviewed_at)


def worklist(session: Session, *, limit: int = 200) -> list[WorklistRow]:
    """The newest studies first (by arrival), each with its newest job's state and lesions."""
    studies = session.scalars(
        select(Study).order_by(Study.created_at.desc(), Study.id.desc()).limit(limit)
    ).all()
    newest: dict[int, Job] = {}
    jobs = session.scalars(
        select(Job)
        .join(Series, Series.id == Job.series_id)
        .where(Series.study_id.in_([study.id for study in studies]))
        .options(selectinload(Job.series), selectinload(Job.results), selectinload(Job.reviews))
        .order_by(Job.id)
    ).all()
    for found in jobs:
        newest[found.series.study_id] = found  # ordered by id: the last one wins
    rows = []
    for study in studies:
        job = newest.get(study.id)
        rows.append(
            WorklistRow(
                study_id=study.id,
                patient_name=study.patient_name,
                patient_id=study.patient_id,
                study_date=study.study_date,
                study_description=study.study_description,
                received_at=study.created_at,
                job_id=job.id if job else None,
                job_state=str(job.state) if job else None,
                lesions={r.view: r.lesion_count for r in job.results} if job else {},
                review=_review_line(job.reviews[-1]) if job and job.reviews else None,
            )
        )
    return rows


def _job_line(job: Job) -> JobLine:
    return JobLine(
        id=job.id,
        series_instance_uid=job.series.series_instance_uid,
        generation=job.generation,
        model_version=job.model_version,
        state=str(job.state),
        error=job.error,
        created_at=job.created_at,
        lesions={result.view: result.lesion_count for result in job.results},
        superseded=bool(job.results) and all(result.superseded for result in job.results),
        reviews=[_review_line(review) for review in job.reviews],
    )


def _jobs_of(session: Session, study_id: int) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .join(Series, Series.id == Job.series_id)
            .where(Series.study_id == study_id)
            .options(
                selectinload(Job.series),
                selectinload(Job.results).selectinload(Result.lesions),
                selectinload(Job.reviews),
            )
            .order_by(Job.id)
        )
    )


def study_page(session: Session, study_id: int) -> StudyPage | None:
    """The study ``study_id`` with its jobs; None if there is no such study."""
    study = session.get(Study, study_id)
    if study is None:
        return None
    jobs = _jobs_of(session, study_id)
    with_results = [job for job in jobs if any(not r.superseded for r in job.results)]
    current_job = with_results[-1] if with_results else None
    results = sorted(
        (r for r in current_job.results if not r.superseded) if current_job else [],
        key=lambda r: VIEWS.index(r.view) if r.view in VIEWS else len(VIEWS),
    )
    return StudyPage(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        study_date=study.study_date,
        study_description=study.study_description,
        received_at=study.created_at,
        jobs=[_job_line(job) for job in reversed(jobs)],
        current=_job_line(current_job) if current_job else None,
        views=[result.view for result in results],
        lesions=[
            LesionLine(
                view=result.view,
                label=lesion.label,
                area_mm2=lesion.area_mm2,
                centroid_row=lesion.centroid_row,
                centroid_column=lesion.centroid_column,
                max_probability=lesion.max_probability,
            )
            for result in results
            for lesion in result.lesions
        ],
    )


def job_in_study(session: Session, study_id: int, job_id: int) -> bool:
    """True when job ``job_id`` is over a series of study ``study_id``."""
    found = session.scalar(
        select(Job.id)
        .join(Series, Series.id == Job.series_id)
        .where(Job.id == job_id, Series.study_id == study_id)
    )
    return found is not None


def overlay_source(session: Session, study_id: int, job_id: int, view: str) -> OverlaySource | None:
    """Where the pixels and mask of ``view`` of job ``job_id`` (of study ``study_id``) are;
    None when the job, the view or its source instance is not known."""
    row = session.execute(
        select(Result, Instance.spool_path)
        .join(Job, Job.id == Result.job_id)
        .join(Series, Series.id == Job.series_id)
        .join(Instance, Instance.sop_instance_uid == Result.source_sop_instance_uid)
        .where(Result.job_id == job_id, Result.view == view, Series.study_id == study_id)
    ).first()
    if row is None:
        return None
    result, spool_path = row
    return OverlaySource(
        seg_path=Path(result.seg_path),
        source_path=Path(spool_path),
        source_sop_instance_uid=result.source_sop_instance_uid,
        source_frame_number=result.source_frame_number,
    )
