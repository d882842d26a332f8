"""The listener's write path in Core SQL: file received instances, open the jobs of 2-frame
scans, mark enqueued jobs ``queued``.

Same rows as the ORM functions of :mod:`pipeline.db.ingest` (``add_instance``, ``open_job``,
``open_skipped_job``; the tests compare them), at a fraction of their cost: the
C-STORE handler waits for this commit before it answers, so every statement counts (README
"Listener throughput"). Races between writers cannot fail a batch: studies, series, instances
and jobs are inserted with ``ON CONFLICT DO NOTHING`` on their unique key (SQLite ≥ 3.24 and
PostgreSQL), and a conflicting instance is a resend, reported as such.

Functions take a :class:`~sqlalchemy.Connection` inside the caller's transaction; the caller
commits. The inserts are compiled by SQLAlchemy once per dialect and run on that transaction's
DBAPI cursor (:func:`_insert`): SQLAlchemy's per-execution machinery cost more than SQLite's work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from pipeline.db.ingest import (
    ReceivedInstance,
    combine_digests,
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
_INSERT_EVENTS = EVENTS.insert()  # built once (see _insert_ignore_in)


@dataclass(frozen=True)
class Filed:
    """The outcome of filing one instance."""

    instance_id: int | None  # None when it was in already (a resend)
    series_id: int
    job_id: int | None = None  # the job its arrival opened (a 2-frame scan), if any


def _insert_ignore(connection: Connection, table: Table, key: str, *returning: str) -> Insert:
    """``INSERT … ON CONFLICT (key) DO NOTHING [RETURNING …]`` in the connection's dialect."""
    return _insert_ignore_in(connection.dialect.name, table, key, returning)


@functools.cache
def _insert_ignore_in(dialect: str, table: Table, key: str, returning: tuple[str, ...]) -> Insert:
    # Built once and reused: SQLAlchemy keeps a statement's cache key with the statement, so a
    # reused one is not walked again on every execution (half the cost of filing a scan).
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    else:
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    if returning:
        statement = statement.returning(*(table.c[name] for name in returning))
    return statement


@dataclass(frozen=True)
class _Compiled:
    """An INSERT compiled once for a dialect and a set of columns, with the bind processors of
    its columns (what SQLAlchemy would apply: aware UTC timestamps, enum values)."""

    sql: str
    order: tuple[str, ...] | None  # the parameters' order for a positional paramstyle
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    # columns not in the rows whose Python-side default the SQL has a parameter for
    defaults: tuple[tuple[str, Callable[[], Any]], ...] = ()

    def parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = dict(row)
        for key, default in self.defaults:
            values[key] = default()
        for key, process in self.processors:
            values[key] = process(values[key])
        return values if self.order is None else tuple(values[key] for key in self.order)


@functools.cache
def _compiled(dialect: Dialect, statement: Insert, keys: tuple[str, ...]) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    table = statement.table
    assert isinstance(table, Table)
    defaults: list[tuple[str, Callable[[], Any]]] = []
    for key in compiled.params:
        if key not in keys:  # a column with a default SQLAlchemy would have computed
            default = table.c[key].default
            if default is None or not (default.is_scalar or default.is_callable):
                raise ValueError(f"no value and no Python default for {table.name}.{key}")
            value = default.arg
            if default.is_callable:  # SQLAlchemy's wrapper takes the execution context
                defaults.append((key, functools.partial(value, None)))
            else:
                defaults.append((key, functools.partial(lambda v: v, value)))
    processors = []
    for key in (*keys, *(key for key, _ in defaults)):
        process = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((key, process))
    order = tuple(compiled.positiontup or ()) if compiled.positional else None
    return _Compiled(str(compiled), order, tuple(processors), tuple(defaults))


def _insert(
    connection: Connection, statement: Insert, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` for each of ``rows`` on the transaction's DBAPI cursor; the rows it
    returned (its RETURNING clause), in order.

    The listener's hot path: SQLAlchemy's execution of a compiled statement (execution
    context, result object, type processing per call) cost more than SQLite's own work — 0.50
    against 0.24 ms for a scan's five statements (SQLite, benchmark's VM), and more while the
    other core is busy. The SQL, parameter order and bind processors are SQLAlchemy's, compiled
    once per dialect; a driver error is raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`
    like any other statement's. Both drivers (sqlite3, psycopg) begin the transaction on the
    first statement; the caller's transaction commits or rolls back.
    """
    if not rows:
        return []
    dialect = connection.dialect
    compiled = _compiled(dialect, statement, tuple(rows[0]))
    returned: list[tuple[Any, ...]] = []
    cursor = connection.connection.cursor()
    try:
        for row in rows:
            parameters = compiled.parameters(row)
            try:
                cursor.execute(compiled.sql, parameters)
                if cursor.description is not None:  # RETURNING
                    returned.extend(tuple(found) for found in cursor.fetchall())
            except dialect.loaded_dbapi.Error as error:
                raise DBAPIError.instance(
                    compiled.sql,
                    parameters,
                    error,
                    dialect.loaded_dbapi.Error,
                    hide_parameters=True,  # patient names: never in a message
                    dialect=dialect,
                ) from error
    finally:
        cursor.close()
    return returned


def _clip(value: str | None, length: int) -> str | None:
    # PostgreSQL enforces VARCHAR lengths; a sender's over-long LO must not fail the store.
    return None if value is None else value[:length]


def _ids(connection: Connection, table: Table, key: str, values: set[str]) -> dict[str, int]:
    column = table.c[key]
    # one value (the common case) as "=": an IN list is compiled afresh for every length
    where = column == next(iter(values)) if len(values) == 1 else column.in_(sorted(values))
    rows = connection.execute(select(column, table.c.id).where(where))
    return {row[0]: row[1] for row in rows}


def _upsert(
    connection: Connection, table: Table, key: str, wanted: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """The ids of the rows ``wanted`` describes (by their ``key``), inserting the missing ones.

    Insert first: a new row (a scan's study and series, the common case) costs one statement;
    a row that is there, that statement and a SELECT.
    """
    statement = _insert_ignore(connection, table, key, key, "id")
    rows = [{key: uid, **row} for uid, row in wanted.items()]
    ids = {uid: int(id_) for uid, id_ in _insert(connection, statement, rows)}
    there = set(wanted) - set(ids)
    if there:
        ids.update(_ids(connection, table, key, there))
    return ids


def _upsert_studies(
    connection: Connection, rows: Sequence[ReceivedInstance], now: datetime
) -> dict[str, int]:
    wanted: dict[str, dict[str, Any]] = {}
    for row in rows:
        wanted.setdefault(
            row.study_instance_uid,
            {
                "patient_name": _clip(row.patient_name, 324),
                "patient_id": _clip(row.patient_id, 64),
                "study_date": _clip(row.study_date, 8),
                "study_description": _clip(row.study_description, 64),
                "accession_number": _clip(row.accession_number, 16),
                "created_at": now,
                "updated_at": now,
            },
        )

    return _upsert(connection, STUDIES, "study_instance_uid", wanted)


def _upsert_series(
    connection: Connection, rows: Sequence[ReceivedInstance], studies: dict[str, int], now: datetime
) -> dict[str, int]:
    wanted: dict[str, dict[str, Any]] = {}
    for row in rows:
        wanted.setdefault(
            row.series_instance_uid,
            {
                "study_id": studies[row.study_instance_uid],
                "modality": _clip(row.modality, 16),
                "series_number": row.series_number,
                "series_description": _clip(row.series_description, 64),
                "created_at": now,
                "updated_at": now,
            },
        )

    return _upsert(connection, SERIES, "series_instance_uid", wanted)


def _insert_instances(
    connection: Connection, rows: Sequence[ReceivedInstance], series: dict[str, int], now: datetime
) -> dict[str, int]:
    """Insert the instances (one statement); the ids of those inserted, by SOP Instance UID."""
    statement = _insert_ignore(connection, INSTANCES, "sop_instance_uid", "sop_instance_uid", "id")
    values: list[dict[str, Any]] = [
        {
            "series_id": series[row.series_instance_uid],
            "sop_instance_uid": row.sop_instance_uid,
            "sop_class_uid": row.sop_class_uid,
            "calling_ae_title": row.calling_ae_title,
            "called_ae_title": row.called_ae_title,
            "transfer_syntax_uid": row.transfer_syntax_uid,
            "size_bytes": row.size_bytes,
            "content_digest": row.content_digest,
            "spool_path": row.spool_path,
            "number_of_frames": row.number_of_frames,
            "skip_reason": row.skip_reason,
            "received_at": now,
        }
        for row in rows
    ]
    return {uid: int(id_) for uid, id_ in _insert(connection, statement, values)}


def _open_jobs(
    connection: Connection, jobs: list[dict[str, Any]], events: list[list[dict[str, Any]]]
) -> list[int | None]:
    """Insert jobs (one statement; those whose idempotency key exists are left out) and the
    first events of each inserted one; the job ids, None where the job existed."""
    statement = _insert_ignore(connection, JOBS, "idempotency_key", "idempotency_key", "id")
    opened = {key: int(id_) for key, id_ in _insert(connection, statement, jobs)}
    ids = [opened.pop(job["idempotency_key"], None) for job in jobs]
    rows = [
        {**event, "job_id": job_id}
        for job_id, job_events in zip(ids, events, strict=True)
        if job_id is not None
        for event in job_events
    ]
    if rows:
        _insert(connection, _INSERT_EVENTS, rows)
    return ids


def _scan_job(
    series_id: int, row: ReceivedInstance, received_at: datetime, model_version: str, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``received`` job of a 2-frame scan filed as ``row`` and its first events (as
    ``ingest.open_job`` over that one instance)."""
    key = idempotency_key(
        [row.sop_instance_uid], combine_digests([row.content_digest]), model_version, 0
    )
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
        {**event, "at": now, "detail": COMPLETE_2_FRAME, "stage": Stage.COMPLETE.value},
    ]
    return job, events


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
    [job_id] = _open_jobs(connection, [job], [[{**event, "stage": None}]])
    return job_id


def instance_exists(connection: Connection, sop_instance_uid: str) -> bool:
    """Whether ``sop_instance_uid`` was received before."""
    return instance_spool_path(connection, sop_instance_uid) is not None


def instance_spool_path(connection: Connection, sop_instance_uid: str) -> str | None:
    """The spool path of ``sop_instance_uid``'s row; None when it has none."""
    statement = select(INSTANCES.c.spool_path).where(
        INSTANCES.c.sop_instance_uid == sop_instance_uid
    )
    return connection.execute(statement.limit(1)).scalar()


def place_series(
    connection: Connection, rows: Sequence[ReceivedInstance], now: datetime | None = None
) -> dict[str, int]:
    """The ids of the series of ``rows``, by Series Instance UID, their studies and series
    inserted where new: the part of filing that reads no content digest."""
    now = now or utcnow()
    return _upsert_series(connection, rows, _upsert_studies(connection, rows, now), now)


def file_instances(
    connection: Connection,
    rows: Sequence[ReceivedInstance],
    model_version: str,
    *,
    open_scans: bool = True,
    series: dict[str, int] | None = None,
) -> list[Filed]:
    """Insert the instances of ``rows`` (with their studies and series) in the caller's
    transaction; a series that is not a bone scan gets its ``skipped`` job; with ``open_scans``,
    a 2-frame whole-body instance opens its job (complete on arrival). ``series``: what
    :func:`place_series` returned for these rows in this transaction."""
    now = utcnow()
    if series is None:
        series = place_series(connection, rows, now)
    inserted = _insert_instances(connection, rows, series, now)
    filed: list[Filed] = []
    scans: list[int] = []  # indexes in filed of the 2-frame scans whose job opens now
    for row in rows:
        series_id = series[row.series_instance_uid]
        # pop: the same instance twice in one batch (a resend on another association) is
        # filed once, the second is the duplicate
        instance_id = inserted.pop(row.sop_instance_uid, None)
        if instance_id is not None and row.skip_reason is not None:
            open_skipped(
                connection, series_id, row.series_instance_uid, row.skip_reason, model_version
            )
        elif instance_id is not None and open_scans and row.number_of_frames == 2:
            scans.append(len(filed))
        filed.append(Filed(instance_id, series_id))
    if scans:
        planned = [_scan_job(filed[i].series_id, rows[i], now, model_version, now) for i in scans]
        job_ids = _open_jobs(connection, [job for job, _ in planned], [e for _, e in planned])
        for index, job_id in zip(scans, job_ids, strict=True):
            filed[index] = Filed(filed[index].instance_id, filed[index].series_id, job_id)
    return filed


def mark_queued(connection: Connection, job_ids: Sequence[int], detail: str) -> list[int]:
    """``received → queued`` for the jobs the broker took, one event each; returns those that
    moved (conditional: a fast worker may have picked one up already)."""
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
            _INSERT_EVENTS,
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
