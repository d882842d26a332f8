"""The workers' side of the tracking database: job leases, results, exports and stage marks.

Exactly once rests on three things here (DESIGN.md "Exactly once where it matters"):

- a job is claimed with a conditional UPDATE that sets a lease (owner + expiry); a duplicated or
  redelivered message finds the lease held and does nothing, and a dead worker's lease expires
  so its redelivered message may take the job over;
- results are written only while the writer still holds the lease, in one transaction with the
  ``segmented`` transition and the export rows;
- an export is claimed the same way (``pending → sending``), so two messages for one export
  never send it twice at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from pipeline.db.ingest import record_event, series_candidates
from pipeline.db.models import Export, Instance, Job, JobEvent, Lesion, Result
from pipeline.db.states import ExportState, JobState, Stage
from pipeline.db.types import utcnow

CLAIMABLE = (JobState.RECEIVED, JobState.QUEUED)


class Claim(enum.Enum):
    """What a worker may do with a job it got a message for."""

    CLAIMED = "claimed"  # run it
    HELD = "held"  # another worker holds an unexpired lease: drop the message
    DONE = "done"  # already segmented (or beyond): nothing to do
    CLOSED = "closed"  # skipped or failed: nothing to do
    MISSING = "missing"  # no such job (deleted by purge)


class LeaseLostError(Exception):
    """The job's lease passed to another worker while this one was running it."""


@dataclass(frozen=True)
class LesionRow:
    label: int
    area_px: int
    area_mm2: float
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]  # row_min, column_min, row_max, column_max
    max_probability: float


@dataclass(frozen=True)
class ViewRow:
    """One view's result as the database stores it."""

    view: str
    source_sop_instance_uid: str
    source_frame_number: int | None
    crop_top: int
    lesions: Sequence[LesionRow]

    @property
    def lesion_area_mm2(self) -> float:
        return float(sum(lesion.area_mm2 for lesion in self.lesions))


@dataclass(frozen=True)
class ResultObject:
    """A DICOM object written for a job (SEG or SR) and to be delivered."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: str


def mark_stage(session: Session, job: Job, stage: Stage, detail: str | None = None) -> None:
    """Add a stage timestamp to ``job``'s events without changing its state."""
    session.add(
        JobEvent(
            job=job, from_state=job.state, to_state=job.state, stage=stage.value, detail=detail
        )
    )


def claim_job(
    session: Session,
    job_id: int,
    owner: str,
    lease_seconds: float,
    *,
    owner_dead: Callable[[str], bool] = lambda _owner: False,
    now: datetime | None = None,
) -> Claim:
    """Take ``job_id`` for ``owner`` for ``lease_seconds``; commit is the caller's.

    A ``received`` or ``queued`` job is claimed; a ``running`` job is taken over only when its
    lease has expired or ``owner_dead(lease_owner)`` says its worker is gone (a killed pool
    child on this host), recorded as ``running → queued → running``.
    """
    now = now or utcnow()
    # The state may move between the read and the conditional UPDATE without the job being
    # taken: the producer marks it ``received → queued`` after sending the task, and a fast
    # worker reads ``received``. Read again and retry then; only another claim ends it.
    for _ in range(CLAIM_TRIES):
        claim = _claim_once(session, job_id, owner, lease_seconds, owner_dead=owner_dead, now=now)
        if claim is not None:
            return claim
    return Claim.HELD  # the job kept moving under us: treat it as taken; the task rechecks


CLAIM_TRIES = 5


def _not_claimed(state: JobState) -> Claim | None:
    """Why a job in ``state`` cannot be claimed now; None when it can (try again)."""
    if state in CLAIMABLE:
        return None
    if state == JobState.RUNNING:
        return Claim.HELD
    return Claim.CLOSED if state in (JobState.SKIPPED, JobState.FAILED) else Claim.DONE


def _claim_once(
    session: Session,
    job_id: int,
    owner: str,
    lease_seconds: float,
    *,
    owner_dead: Callable[[str], bool],
    now: datetime,
) -> Claim | None:
    """One claim attempt; None when the job's state changed under us to a claimable one."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return Claim.MISSING
    previous = job.state
    if previous not in (*CLAIMABLE, JobState.RUNNING):
        return _not_claimed(previous)
    lease_free = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    if previous == JobState.RUNNING and job.lease_owner and owner_dead(job.lease_owner):
        lease_free = or_(lease_free, Job.lease_owner == job.lease_owner)
    claimable = or_(Job.state.in_(CLAIMABLE), and_(Job.state == JobState.RUNNING, lease_free))
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(Job)
        .where(Job.id == job_id, Job.state == previous, claimable)
        .values(
            state=JobState.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.refresh(job)
        return _not_claimed(job.state)  # None: received → queued under us, try again
    if previous == JobState.RUNNING:
        session.add(
            JobEvent(
                job_id=job_id,
                from_state=JobState.RUNNING,
                to_state=JobState.QUEUED,
                detail="lease taken over: the previous worker is gone",
            )
        )
        previous = JobState.QUEUED
    session.add(
        JobEvent(
            job_id=job_id,
            from_state=previous,
            to_state=JobState.RUNNING,
            stage=Stage.STARTED.value,
            detail=f"worker {owner}",
        )
    )
    session.flush()
    session.refresh(job)
    return Claim.CLAIMED


def lease_remaining(session: Session, job_id: int, now: datetime | None = None) -> float | None:
    """Seconds left on a running job's lease (None when it is not running)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != JobState.RUNNING or job.lease_expires_at is None:
        return None
    return max(0.0, (job.lease_expires_at - (now or utcnow())).total_seconds())


def _held(session: Session, job_id: int, owner: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
        raise LeaseLostError(f"job {job_id} is no longer leased to {owner}")
    return job


def job_sources(session: Session, job: Job) -> list[Instance]:
    """The instances a job segments: its series' bone-scan instances."""
    return series_candidates(session, job.series_id)


def fail_job(session: Session, job_id: int, owner: str | None, reason: str) -> bool:
    """Fail a job permanently with ``reason`` (only while ``owner`` holds it, if given)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state not in (*CLAIMABLE, JobState.RUNNING):
        return False
    if owner is not None and job.state == JobState.RUNNING and job.lease_owner != owner:
        return False
    job.error = reason
    job.lease_owner = None
    job.lease_expires_at = None
    record_event(session, job, JobState.FAILED, reason)
    return True


def release_for_retry(session: Session, job_id: int, owner: str, reason: str) -> None:
    """Give a running job back (``running → queued``) after a transient error."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
        return
    job.error = reason
    job.lease_owner = None
    job.lease_expires_at = None
    record_event(session, job, JobState.QUEUED, f"retry: {reason}")


def save_results(
    session: Session,
    job_id: int,
    owner: str,
    *,
    views: Sequence[ViewRow],
    seg: ResultObject,
    sr: ResultObject | None,
    destinations: Iterable[str],
    inference_done_at: datetime,
    seg_written_at: datetime,
) -> list[int]:
    """Store a job's results and open its exports, then ``running → segmented``.

    Raises :class:`LeaseLostError` when the lease is no longer ``owner``'s (nothing is written).
    Results of earlier jobs of the same series are marked superseded (kept). Returns the new
    export ids, one per (destination, object).
    """
    job = _held(session, job_id, owner)
    earlier = select(Job.id).where(Job.series_id == job.series_id, Job.id != job.id)
    session.execute(
        update(Result)
        .where(Result.job_id.in_(earlier), Result.superseded.is_(False))
        .values(superseded=True)
        .execution_options(synchronize_session=False)
    )
    for row in views:
        result = Result(
            job_id=job.id,
            view=row.view,
            source_sop_instance_uid=row.source_sop_instance_uid,
            source_frame_number=row.source_frame_number,
            seg_series_instance_uid=seg.series_instance_uid,
            seg_sop_instance_uid=seg.sop_instance_uid,
            seg_path=seg.path,
            sr_sop_instance_uid=sr.sop_instance_uid if sr else None,
            sr_path=sr.path if sr else None,
            crop_top=row.crop_top,
            lesion_count=len(row.lesions),
            lesion_area_mm2=row.lesion_area_mm2,
        )
        result.lesions = [
            Lesion(
                label=lesion.label,
                area_px=lesion.area_px,
                area_mm2=lesion.area_mm2,
                centroid_row=lesion.centroid[0],
                centroid_column=lesion.centroid[1],
                bbox_row_min=lesion.bbox[0],
                bbox_column_min=lesion.bbox[1],
                bbox_row_max=lesion.bbox[2],
                bbox_column_max=lesion.bbox[3],
                max_probability=lesion.max_probability,
            )
            for lesion in row.lesions
        ]
        session.add(result)
    session.add(
        JobEvent(
            job=job,
            from_state=JobState.RUNNING,
            to_state=JobState.RUNNING,
            stage=Stage.INFERENCE_DONE.value,
            at=inference_done_at,
        )
    )
    exports = [
        Export(
            job=job,
            destination=name,
            sop_instance_uid=obj.sop_instance_uid,
            sop_class_uid=obj.sop_class_uid,
            path=obj.path,
            state=ExportState.PENDING,
        )
        for name in destinations
        for obj in (seg, *((sr,) if sr else ()))
    ]
    session.add_all(exports)
    job.lease_owner = None
    job.lease_expires_at = None
    job.error = None
    record_event(session, job, JobState.SEGMENTED, f"SEG {seg.sop_instance_uid}")
    session.add(
        JobEvent(
            job=job,
            from_state=JobState.SEGMENTED,
            to_state=JobState.SEGMENTED,
            stage=Stage.SEG_WRITTEN.value,
            at=seg_written_at,
        )
    )
    session.flush()
    return [export.id for export in exports]


# ---------------------------------------------------------------------------------- exports


class ExportClaim(enum.Enum):
    CLAIMED = "claimed"
    BUSY = "busy"  # another worker is sending it now
    FINISHED = "finished"  # delivered or failed already
    MISSING = "missing"


def claim_export(
    session: Session, export_id: int, lease_seconds: float, now: datetime | None = None
) -> ExportClaim:
    """``pending → sending`` (or a stale ``sending`` taken over) with ``attempts + 1``."""
    now = now or utcnow()
    export = session.get(Export, export_id, populate_existing=True)
    if export is None:
        return ExportClaim.MISSING
    if export.state in (ExportState.DELIVERED, ExportState.FAILED):
        return ExportClaim.FINISHED
    stale = now - timedelta(seconds=lease_seconds)
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(Export)
        .where(
            Export.id == export_id,
            or_(
                Export.state == ExportState.PENDING,
                and_(Export.state == ExportState.SENDING, Export.updated_at < stale),
            ),
        )
        .values(state=ExportState.SENDING, attempts=Export.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.refresh(export)
        if export.state == ExportState.SENDING:
            return ExportClaim.BUSY
        return ExportClaim.FINISHED
    session.flush()
    session.refresh(export)
    return ExportClaim.CLAIMED


def _settle_job(session: Session, job: Job) -> None:
    """Move the job on once none of its exports is still open.

    The job row is locked first (PostgreSQL), and the export states read after the lock, so two
    exports of one job finishing at once cannot both see the other still sending.
    """
    session.flush()
    session.get(Job, job.id, populate_existing=True, with_for_update=True)
    states = list(session.scalars(select(Export.state).where(Export.job_id == job.id)))
    if any(state in (ExportState.PENDING, ExportState.SENDING) for state in states):
        return
    if job.state not in (JobState.SEGMENTED, JobState.EXPORT_FAILED):
        return
    failed = session.scalars(
        select(Export.last_error)
        .where(Export.job_id == job.id, Export.state == ExportState.FAILED)
        .order_by(Export.id)
    ).first()
    if ExportState.FAILED in states:
        if job.state != JobState.EXPORT_FAILED:
            job.error = failed
            record_event(session, job, JobState.EXPORT_FAILED, failed)
        return
    job.error = None
    record_event(session, job, JobState.EXPORTED, f"{len(states)} object(s) delivered")


def export_delivered(session: Session, export_id: int, detail: str) -> Export:
    """``sending → delivered``; the job becomes ``exported`` when its last export is delivered."""
    export = session.get(Export, export_id, populate_existing=True)
    assert export is not None
    now = utcnow()
    export.state = ExportState.DELIVERED
    export.delivered_at = now
    export.last_error = None
    export.next_attempt_at = None
    job = export.job
    mark_stage(session, job, Stage.SENT, f"{export.destination} {export.sop_instance_uid} {detail}")
    _settle_job(session, job)
    return export


def export_verified(session: Session, export_id: int, found: bool | None) -> None:
    """Record the C-FIND read-back (None: the destination does not support it)."""
    export = session.get(Export, export_id, populate_existing=True)
    assert export is not None
    if found:
        export.verified_at = utcnow()
        mark_stage(
            session, export.job, Stage.VERIFIED, f"{export.destination} {export.sop_instance_uid}"
        )
    elif found is None:
        export.last_error = None
    else:
        export.last_error = "C-FIND read-back did not find the instance after a successful C-STORE"


def export_retry_later(session: Session, export_id: int, reason: str, delay_s: float) -> None:
    """``sending → pending`` with the next attempt ``delay_s`` from now."""
    export = session.get(Export, export_id, populate_existing=True)
    assert export is not None
    export.state = ExportState.PENDING
    export.last_error = reason
    export.next_attempt_at = utcnow() + timedelta(seconds=delay_s)


def export_failed(session: Session, export_id: int, reason: str) -> None:
    """``sending → failed`` with ``reason``; the job becomes ``export_failed`` once settled."""
    export = session.get(Export, export_id, populate_existing=True)
    assert export is not None
    export.state = ExportState.FAILED
    export.last_error = reason
    export.next_attempt_at = None
    _settle_job(session, export.job)


def due_exports(session: Session, before: datetime, limit: int = 100) -> list[int]:
    """Pending exports whose next attempt is overdue (their message was lost): for the sweeper."""
    return list(
        session.scalars(
            select(Export.id)
            .where(
                Export.state == ExportState.PENDING,
                or_(Export.next_attempt_at.is_(None), Export.next_attempt_at < before),
                Export.updated_at < before,
            )
            .order_by(Export.id)
            .limit(limit)
        )
    )


def stalled_job_ids(
    session: Session, now: datetime, queued_before: datetime, limit: int = 100
) -> list[int]:
    """Jobs whose message may be lost: ``queued`` since before ``queued_before``, or ``running``
    with an expired lease. Re-sending their task is harmless (the lease makes it a no-op)."""
    expired = and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
    old_queued = and_(Job.state == JobState.QUEUED, Job.updated_at < queued_before)
    return list(
        session.scalars(
            select(Job.id).where(or_(expired, old_queued)).order_by(Job.id).limit(limit)
        )
    )
