"""What the DICOM listener writes: studies, series and instances as received, jobs it opens.

Plain functions over a caller's :class:`~sqlalchemy.orm.Session`; the caller owns the
transaction (``with session_factory.begin() as session: ...``) and commits before it answers the
modality or enqueues anything (warehouse manner). Races between associations end in an
``IntegrityError`` on a unique column (SOP Instance UID, study / series UID, job idempotency
key); the caller rolls back and retries or treats the row as already there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.db.models import Instance, Job, JobEvent, Series, Study
from pipeline.db.states import JobState, Stage, check_transition


@dataclass(frozen=True)
class ReceivedInstance:
    """One stored SOP instance and the header attributes the tracking tables keep."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    calling_ae_title: str
    called_ae_title: str | None
    transfer_syntax_uid: str
    size_bytes: int
    content_digest: str
    spool_path: str
    number_of_frames: int | None
    skip_reason: str | None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    accession_number: str | None = None


def _clip(value: str | None, length: int) -> str | None:
    # PostgreSQL enforces VARCHAR lengths; a sender's over-long LO must not fail the store.
    return None if value is None else value[:length]


def upsert_study(session: Session, received: ReceivedInstance) -> Study:
    """The study row, created on first sight with the patient and study attributes."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == received.study_instance_uid)
    ).one_or_none()
    if study is None:
        study = Study(
            study_instance_uid=received.study_instance_uid,
            patient_name=_clip(received.patient_name, 324),
            patient_id=_clip(received.patient_id, 64),
            study_date=_clip(received.study_date, 8),
            study_description=_clip(received.study_description, 64),
            accession_number=_clip(received.accession_number, 16),
        )
        session.add(study)
        session.flush()
    return study


def upsert_series(session: Session, study: Study, received: ReceivedInstance) -> Series:
    """The series row under ``study``, created on first sight."""
    series = session.scalars(
        select(Series).where(Series.series_instance_uid == received.series_instance_uid)
    ).one_or_none()
    if series is None:
        series = Series(
            study_id=study.id,
            series_instance_uid=received.series_instance_uid,
            modality=_clip(received.modality, 16),
            series_number=received.series_number,
            series_description=_clip(received.series_description, 64),
        )
        session.add(series)
        session.flush()
    return series


def add_instance(session: Session, received: ReceivedInstance) -> Instance:
    """Insert the instance (and its study and series); ``IntegrityError`` if it is already in."""
    series = upsert_series(session, upsert_study(session, received), received)
    instance = Instance(
        series_id=series.id,
        sop_instance_uid=received.sop_instance_uid,
        sop_class_uid=received.sop_class_uid,
        calling_ae_title=received.calling_ae_title,
        called_ae_title=received.called_ae_title,
        transfer_syntax_uid=received.transfer_syntax_uid,
        size_bytes=received.size_bytes,
        content_digest=received.content_digest,
        spool_path=received.spool_path,
        number_of_frames=received.number_of_frames,
        skip_reason=received.skip_reason,
    )
    session.add(instance)
    session.flush()
    return instance


def idempotency_key(
    sop_instance_uids: Iterable[str], content_digest: str, model_version: str, generation: int
) -> str:
    """SHA-256 over the sorted source UIDs, their combined content digest, the model version
    and the generation.

    The content digest (SHA-256 of each stored file) ties the key to the bytes the job reads.
    A resent SOP instance is filed once, by its UID, so no second job comes from a resend
    whatever its bytes. Until revision 0003 a separate SHA-256 of the pixel data took this
    place: it cost the listener ~1 ms of CPU per 1 MB scan and decided nothing the UIDs did not.
    """
    text = "\n".join(
        ["\\".join(sorted(sop_instance_uids)), content_digest, model_version, str(generation)]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def combine_digests(content_digests: Iterable[str]) -> str:
    """One digest over content digests given in SOP Instance UID order."""
    return hashlib.sha256("\n".join(content_digests).encode()).hexdigest()


def combined_content_digest(instances: Sequence[Instance]) -> str:
    """One digest over the content digests of ``instances``, in SOP Instance UID order."""
    ordered = sorted(instances, key=lambda instance: instance.sop_instance_uid)
    return combine_digests(instance.content_digest for instance in ordered)


def skipped_job_key(series_instance_uid: str, model_version: str) -> str:
    """The idempotency key of a series' ``skipped`` job (one per series and model version)."""
    text = f"skipped\n{series_instance_uid}\n{model_version}"
    return hashlib.sha256(text.encode()).hexdigest()


def record_event(session: Session, job: Job, to_state: JobState, detail: str | None = None) -> None:
    """Move ``job`` to ``to_state`` (checked) and add the transition to its events."""
    current = job.state if job.id is not None and job.state is not None else None
    check_transition(current, to_state)
    job.state = to_state
    session.add(JobEvent(job=job, from_state=current, to_state=to_state, detail=detail))


def job_by_key(session: Session, key: str) -> Job | None:
    """The job with idempotency key ``key``, if one was opened."""
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


def open_job(
    session: Session,
    series: Series,
    sources: Sequence[Instance],
    model_version: str,
    *,
    generation: int = 0,
    detail: str | None = None,
) -> Job | None:
    """Open a ``received`` job over ``sources``; None if that exact job exists (idempotent).

    A concurrent opener of the same job loses with ``IntegrityError`` on the idempotency key.
    """
    key = idempotency_key(
        (instance.sop_instance_uid for instance in sources),
        combined_content_digest(sources),
        model_version,
        generation,
    )
    if job_by_key(session, key) is not None:
        return None
    job = Job(
        series_id=series.id,
        model_version=model_version,
        generation=generation,
        idempotency_key=key,
        state=JobState.RECEIVED,
    )
    session.add(job)
    check_transition(None, JobState.RECEIVED)
    first_arrival = min((i.received_at for i in sources if i.received_at), default=None)
    if first_arrival is not None and generation == 0:  # stage "received": first instance in
        session.add(
            JobEvent(
                job=job,
                from_state=None,
                to_state=JobState.RECEIVED,
                at=first_arrival,
                stage=Stage.RECEIVED.value,
            )
        )
    session.add(
        JobEvent(
            job=job,
            from_state=None,
            to_state=JobState.RECEIVED,
            detail=detail,
            stage=Stage.COMPLETE.value,
        )
    )
    session.flush()
    return job


def open_skipped_job(
    session: Session, series: Series, reason: str, model_version: str
) -> Job | None:
    """Record once per series that it is not a whole-body bone scan (state ``skipped``)."""
    if session.scalar(select(func.count(Job.id)).where(Job.series_id == series.id)):
        return None
    job = Job(
        series_id=series.id,
        model_version=model_version,
        generation=0,
        idempotency_key=skipped_job_key(series.series_instance_uid, model_version),
        state=JobState.SKIPPED,
        error=reason,
    )
    session.add(job)
    session.add(JobEvent(job=job, from_state=None, to_state=JobState.SKIPPED, detail=reason))
    session.flush()
    return job


def pending_job_ids(session: Session, updated_before: datetime, limit: int = 100) -> list[int]:
    """Jobs still ``received`` (never handed to the broker) since before ``updated_before``."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.state == JobState.RECEIVED, Job.updated_at < updated_before)
            .order_by(Job.id)
            .limit(limit)
        )
    )


def series_candidates(session: Session, series_id: int) -> list[Instance]:
    """The series' instances that are part of a whole-body bone scan (not skipped)."""
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.series_id == series_id, Instance.skip_reason.is_(None))
            .order_by(Instance.id)
        )
    )


def quiet_series_without_job(session: Session, last_received_before: datetime) -> list[int]:
    """Series with bone-scan instances, no job yet, and nothing received since the cut-off."""
    last = func.max(Instance.received_at)
    has_job = select(Job.id).where(Job.series_id == Instance.series_id).exists()
    return list(
        session.scalars(
            select(Instance.series_id)
            .where(Instance.skip_reason.is_(None), ~has_job)
            .group_by(Instance.series_id)
            .having(last < last_received_before)
        )
    )


def spooled_paths(session: Session, paths: Iterable[str]) -> set[str]:
    """Which of ``paths`` already have an instance row."""
    wanted = list(paths)
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(
            session.scalars(select(Instance.spool_path).where(Instance.spool_path.in_(chunk)))
        )
    return found
