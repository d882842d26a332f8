"""The listener's write path in Core SQL: file received instances, open the jobs of 2-frame
scans, mark enqueued jobs ``queued``.

Same rows as the ORM functions of :mod:`pipeline.db.ingest` (``add_instance``, ``open_job``,
``open_skipped_job``, ``mark_queued``; the tests compare them), at a fraction of their cost: the
C-STORE handler waits for this commit before it answers, so every statement counts (README
"Listener throughput"). Races between writers cannot fail a batch: studies, series, instances
and jobs are inserted with ``ON CONFLICT DO NOTHING`` on their unique key (SQLite ≥ 3.24 and
PostgreSQL), and a conflicting instance is a resend, reported as such.

Functions take a :class:`~sqlalchemy.Connection` inside the caller's transaction; the caller
commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pipeline.db.ingest import (
    ReceivedInstance,
    combine_pixel_digests,
    idempotency_key,
    skipped_job_key,
)
from pipeline.db.models import Instance, Job, JobEvent, Series, Study
from pipeline.db.states import JobState, Stage
from pipeline.db.types import utcnow

STUDIES: Table = Study.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]
INSTANCES: Table = Instance.__table__  # type: ignore[assignment]
JOBS: Table = Job.__table__  # type: ignore[assignment]
EVENTS: Table = JobEvent.__table__  # type: ignore[assignment]

COMPLETE_2_FRAME = "complete: 2-frame whole-body"


@dataclass(frozen=True)
class Filed:
    """The outcome of filing one instance."""

    instance_id: int | None  # None when it was in already (a resend)
    series_id: int
    job_id: int | None = None  # the job its arrival opened (a 2-frame scan), if any


def _insert_ignore(connection: Connection, table: Table, key: str) -> Insert:
    """``INSERT … ON CONFLICT (key) DO NOTHING`` in the connection's dialect."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


def _clip(value: str | None, length: int) -> str | None:
    # PostgreSQL enforces VARCHAR lengths; a sender's over-long LO must not fail the store.
    return None if value is None else value[:length]


def _ids(connection: Connection, table: Table, key: str, values: set[str]) -> dict[str, int]:
    column = table.c[key]
    # one value (the common case) as "=": an IN list is compiled afresh for every length
    where = column == next(iter(values)) if len(values) == 1 else column.in_(sorted(values))
    rows = connection.execute(select(column, table.c.id).where(where))
    return {row[0]: row[1] for row in rows}


def _upsert_studies(
    connection: Connection, rows: Sequence[ReceivedInstance], now: datetime
) -> dict[str, int]:
    first: dict[str, ReceivedInstance] = {}
    for row in rows:
        first.setdefault(row.study_instance_uid, row)
    known = _ids(connection, STUDIES, "study_instance_uid", set(first))
    new = [
        {
            "study_instance_uid": uid,
            "patient_name": _clip(row.patient_name, 324),
            "patient_id": _clip(row.patient_id, 64),
            "study_date": _clip(row.study_date, 8),
            "study_description": _clip(row.study_description, 64),
            "accession_number": _clip(row.accession_number, 16),
            "created_at": now,
            "updated_at": now,
        }
        for uid, row in first.items()
        if uid not in known
    ]
    if not new:
        return known
    connection.execute(_insert_ignore(connection, STUDIES, "study_instance_uid"), new)
    return _ids(connection, STUDIES, "study_instance_uid", set(first))


def _upsert_series(
    connection: Connection, rows: Sequence[ReceivedInstance], studies: dict[str, int], now: datetime
) -> dict[str, int]:
    first: dict[str, ReceivedInstance] = {}
    for row in rows:
        first.setdefault(row.series_instance_uid, row)
    known = _ids(connection, SERIES, "series_instance_uid", set(first))
    new = [
        {
            "study_id": studies[row.study_instance_uid],
            "series_instance_uid": uid,
            "modality": _clip(row.modality, 16),
            "series_number": row.series_number,
            "series_description": _clip(row.series_description, 64),
            "created_at": now,
            "updated_at": now,
        }
        for uid, row in first.items()
        if uid not in known
    ]
    if not new:
        return known
    connection.execute(_insert_ignore(connection, SERIES, "series_instance_uid"), new)
    return _ids(connection, SERIES, "series_instance_uid", set(first))


def _insert_instance(
    connection: Connection, row: ReceivedInstance, series_id: int, now: datetime
) -> int | None:
    statement = _insert_ignore(connection, INSTANCES, "sop_instance_uid").returning(INSTANCES.c.id)
    values: dict[str, Any] = {
        "series_id": series_id,
        "sop_instance_uid": row.sop_instance_uid,
        "sop_class_uid": row.sop_class_uid,
        "calling_ae_title": row.calling_ae_title,
        "called_ae_title": row.called_ae_title,
        "transfer_syntax_uid": row.transfer_syntax_uid,
        "size_bytes": row.size_bytes,
        "content_digest": row.content_digest,
        "pixel_digest": row.pixel_digest,
        "spool_path": row.spool_path,
        "number_of_frames": row.number_of_frames,
        "skip_reason": row.skip_reason,
        "received_at": now,
    }
    found = connection.execute(statement, values).scalar_one_or_none()
    return None if found is None else int(found)


def _open(
    connection: Connection,
    values: dict[str, Any],
    events: list[dict[str, Any]],
) -> int | None:
    """Insert a job (None if its idempotency key exists) and its first events."""
    statement = _insert_ignore(connection, JOBS, "idempotency_key").returning(JOBS.c.id)
    job_id = connection.execute(statement, values).scalar_one_or_none()
    if job_id is None:
        return None
    connection.execute(EVENTS.insert(), [{**event, "job_id": job_id} for event in events])
    return int(job_id)


def open_scan_job(
    connection: Connection,
    series_id: int,
    row: ReceivedInstance,
    received_at: datetime,
    model_version: str,
    *,
    detail: str = COMPLETE_2_FRAME,
) -> int | None:
    """Open the ``received`` job of a 2-frame scan filed as ``row`` (as ``ingest.open_job``
    over that one instance); None if that exact job exists."""
    key = idempotency_key(
        [row.sop_instance_uid],
        combine_pixel_digests([row.pixel_digest]),
        model_version,
        0,
    )
    now = utcnow()
    job = {
        "series_id": series_id,
        "model_version": model_version,
        "generation": 0,
        "idempotency_key": key,
        "state": JobState.RECEIVED,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    event = {"from_state": None, "to_state": JobState.RECEIVED, "detail": None}
    events = [
        {**event, "at": received_at, "stage": Stage.RECEIVED.value},
        {**event, "at": now, "detail": detail, "stage": Stage.COMPLETE.value},
    ]
    return _open(connection, job, events)


def open_skipped(
    connection: Connection, series_id: int, series_uid: str, reason: str, model_version: str
) -> int | None:
    """Record once per series that it is not a whole-body bone scan (as
    ``ingest.open_skipped_job``); None if the series has a job already."""
    if connection.execute(select(JOBS.c.id).where(JOBS.c.series_id == series_id).limit(1)).first():
        return None
    now = utcnow()
    job = {
        "series_id": series_id,
        "model_version": model_version,
        "generation": 0,
        "idempotency_key": skipped_job_key(series_uid, model_version),
        "state": JobState.SKIPPED,
        "error": reason,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    event = {"from_state": None, "to_state": JobState.SKIPPED, "detail": reason, "at": now}
    return _open(connection, job, [{**event, "stage": None}])


def instance_exists(connection: Connection, sop_instance_uid: str) -> bool:
    """Whether ``sop_instance_uid`` was received before."""
    statement = select(INSTANCES.c.id).where(INSTANCES.c.sop_instance_uid == sop_instance_uid)
    return connection.execute(statement.limit(1)).first() is not None


def file_instances(
    connection: Connection,
    rows: Sequence[ReceivedInstance],
    model_version: str,
    *,
    open_scans: bool = True,
) -> list[Filed]:
    """Insert the instances of ``rows`` (with their studies and series) in the caller's
    transaction; a series that is not a bone scan gets its ``skipped`` job; with ``open_scans``,
    a 2-frame whole-body instance opens its job (complete on arrival)."""
    now = utcnow()
    studies = _upsert_studies(connection, rows, now)
    series = _upsert_series(connection, rows, studies, now)
    filed = []
    for row in rows:
        series_id = series[row.series_instance_uid]
        instance_id = _insert_instance(connection, row, series_id, now)
        job_id = None
        if instance_id is not None and row.skip_reason is not None:
            open_skipped(
                connection, series_id, row.series_instance_uid, row.skip_reason, model_version
            )
        elif instance_id is not None and open_scans and row.number_of_frames == 2:
            job_id = open_scan_job(connection, series_id, row, now, model_version)
        filed.append(Filed(instance_id, series_id, job_id))
    return filed


def mark_queued(connection: Connection, job_ids: Sequence[int], detail: str) -> list[int]:
    """``received → queued`` for the jobs the broker took (as ``ingest.mark_queued``); returns
    those that moved (a fast worker may have picked one up already)."""
    if not job_ids:
        return []
    now = utcnow()
    moved = [
        int(job_id)
        for job_id in connection.execute(
            update(JOBS)
            .where(JOBS.c.id.in_(list(job_ids)), JOBS.c.state == JobState.RECEIVED)
            .values(state=JobState.QUEUED, updated_at=now)
            .returning(JOBS.c.id)
        ).scalars()
    ]
    if moved:
        connection.execute(
            EVENTS.insert(),
            [
                {
                    "job_id": job_id,
                    "from_state": JobState.RECEIVED,
                    "to_state": JobState.QUEUED,
                    "at": now,
                    "detail": detail,
                    "stage": Stage.QUEUED.value,
                }
                for job_id in sorted(moved)
            ],
        )
    return sorted(moved)
