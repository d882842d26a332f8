"""The listener's Core write path (pipeline.db.filing) writes what the ORM functions of
pipeline.db.ingest write, on real SQLite and PostgreSQL, and takes races without failing."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.db import filing, ingest, migrate
from pipeline.db.models import Instance, Job, JobEvent, Series, Study
from pipeline.db.session import make_session_factory
from pipeline.db.states import JobState

VERSION = "msanet-test"


def _received(index: int, **changes: Any) -> ingest.ReceivedInstance:
    row = ingest.ReceivedInstance(
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.1{index}",
        series_instance_uid=f"1.2.826.0.1.3680043.8.498.2{index}",
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.3{index}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
        calling_ae_title="MODALITY",
        called_ae_title="BONESCAN",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size_bytes=1049876,
        content_digest=f"{index:064x}",
        spool_path=f"/spool/{index}.dcm",
        number_of_frames=2,
        skip_reason=None,
        modality="NM",
        series_number=1,
        series_description="WB" * 40,  # over-long: clipped to 64
        patient_name="Doe^Jane",
        patient_id="PID",
        study_date="20261121",
        study_description="BONE SCAN",
        accession_number="A" * 20,  # over-long: clipped to 16
    )
    return replace(row, **changes)


def _snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the filing writes, without ids and timestamps."""
    studies = session.scalars(select(Study).order_by(Study.study_instance_uid))
    series = session.scalars(select(Series).order_by(Series.series_instance_uid))
    instances = session.scalars(select(Instance).order_by(Instance.sop_instance_uid))
    jobs = session.scalars(select(Job).order_by(Job.idempotency_key))
    return {
        "studies": [
            (
                s.study_instance_uid,
                s.patient_name,
                s.patient_id,
                s.study_date,
                s.study_description,
                s.accession_number,
            )
            for s in studies
        ],
        "series": [
            (
                s.study.study_instance_uid,
                s.series_instance_uid,
                s.modality,
                s.series_number,
                s.series_description,
            )
            for s in series
        ],
        "instances": [
            (
                *tuple(
                    getattr(i, column.name)
                    for column in Instance.__table__.columns
                    if column.name not in {"id", "series_id", "received_at"}
                ),
                i.series.series_instance_uid,
            )
            for i in instances
        ],
        "jobs": [
            (
                j.series.series_instance_uid,
                j.model_version,
                j.generation,
                j.idempotency_key,
                j.state,
                j.error,
                j.attempts,
                *tuple((e.from_state, e.to_state, e.detail, e.stage) for e in j.events),
            )
            for j in jobs
        ],
    }


def _orm(session: Session, rows: list[ingest.ReceivedInstance]) -> None:
    for row in rows:
        instance = ingest.add_instance(session, row)
        if row.skip_reason is not None:
            ingest.open_skipped_job(session, instance.series, row.skip_reason, VERSION)
        elif row.number_of_frames == 2:
            ingest.open_job(
                session, instance.series, [instance], VERSION, detail=filing.COMPLETE_2_FRAME
            )


def test_core_filing_writes_what_the_orm_writes(engine: Engine, database_url: str) -> None:
    rows = [
        _received(1),
        _received(2, skip_reason="modality CT is not NM", modality="CT", number_of_frames=None),
        _received(3, number_of_frames=1),  # a single view: no job on arrival
    ]
    with make_session_factory(engine).begin() as session:
        _orm(session, rows)
    with make_session_factory(engine)() as session:
        expected = _snapshot(session)
    migrate.downgrade(database_url, "base")
    migrate.upgrade(database_url)

    with engine.begin() as connection:
        filed = filing.file_instances(connection, rows, VERSION)
    with make_session_factory(engine)() as session:
        assert _snapshot(session) == expected
        events = session.scalars(select(JobEvent)).all()
    assert [f.job_id is not None for f in filed] == [True, False, False]
    assert all(f.instance_id is not None for f in filed)
    assert all(event.at is not None for event in events)


def test_a_resend_is_reported_and_filed_once(engine: Engine) -> None:
    with engine.begin() as connection:
        [first] = filing.file_instances(connection, [_received(1)], VERSION)
    with engine.begin() as connection:
        again, other = filing.file_instances(connection, [_received(1), _received(2)], VERSION)
    with engine.begin() as connection:  # the same instance twice in one batch
        twice = filing.file_instances(connection, [_received(3), _received(3)], VERSION)
        assert filing.instance_exists(connection, _received(3).sop_instance_uid)
    assert first.instance_id is not None
    assert first.job_id is not None
    assert again == filing.Filed(None, first.series_id, None)
    assert other.instance_id is not None
    assert twice[0].instance_id is not None
    assert twice[1].instance_id is None
    with make_session_factory(engine)() as session:
        assert len(session.scalars(select(Instance)).all()) == 3
        assert len(session.scalars(select(Job)).all()) == 3


def test_concurrent_writers_of_one_study_all_succeed(engine: Engine) -> None:
    """Eight threads file eight instances of one new study and series at once: ON CONFLICT
    takes the race for the study and series rows, no writer fails."""
    rows = [
        _received(0, sop_instance_uid=f"1.2.826.0.1.3680043.8.498.9{i}", content_digest=f"{i:064x}")
        for i in range(8)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(len(rows))

    def file(row: ingest.ReceivedInstance) -> None:
        try:
            start.wait()
            with engine.begin() as connection:
                filing.file_instances(connection, [row], VERSION)
        except BaseException as error:  # collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=file, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with make_session_factory(engine)() as session:
        assert len(session.scalars(select(Study)).all()) == 1
        assert len(session.scalars(select(Series)).all()) == 1
        assert len(session.scalars(select(Job)).all()) == 8


def test_mark_queued_moves_received_jobs_only(engine: Engine) -> None:
    with engine.begin() as connection:
        filed = filing.file_instances(connection, [_received(1), _received(2)], VERSION)
    ids = [f.job_id for f in filed if f.job_id is not None]
    with make_session_factory(engine).begin() as session:
        running = session.get(Job, ids[1])
        assert running is not None
        running.state = JobState.RUNNING  # a fast worker got there first
    with engine.begin() as connection:
        moved = filing.mark_queued(connection, ids, "sent")
    assert moved == [ids[0]]
    with make_session_factory(engine)() as session:
        job = session.get(Job, ids[0])
        assert job is not None
        assert job.state == JobState.QUEUED
        assert [(e.to_state, e.detail, e.stage) for e in job.events][-1] == (
            JobState.QUEUED,
            "sent",
            "queued",
        )


def test_timestamps_and_states_are_stored_as_sqlalchemy_stores_them(
    engine: Engine, database_url: str
) -> None:
    """The listener's statements run on the DBAPI cursor with SQLAlchemy's compiled SQL and
    bind processors: what they store reads back, and compares, like what the ORM stored."""
    with make_session_factory(engine).begin() as session:
        _orm(session, [_received(1)])
    with engine.begin() as connection:
        filing.file_instances(connection, [_received(2)], VERSION)
    columns = "received_at, sop_instance_uid"
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            f"SELECT {columns} FROM instances ORDER BY sop_instance_uid"
        ).all()
        states = connection.exec_driver_sql("SELECT state FROM jobs ORDER BY id").scalars().all()
    assert states == [JobState.RECEIVED.value] * 2
    orm_at, core_at = (row[0] for row in stored)
    assert type(orm_at) is type(core_at)  # text on SQLite, a datetime on PostgreSQL
    if isinstance(orm_at, str):
        assert [len(orm_at), orm_at[10]] == [len(core_at), core_at[10]]  # one format
    assert orm_at <= core_at  # and they compare in time order
    with make_session_factory(engine)() as session:
        times = session.scalars(select(Instance.received_at)).all()
    assert all(at.tzinfo is not None for at in times)


def test_a_statement_the_database_refuses_raises_sqlalchemys_error_without_patient_data(
    engine: Engine,
) -> None:
    row = _received(1, patient_name="Private^Patient")
    with engine.begin() as connection:
        filing.file_instances(connection, [row], VERSION)
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        filing._insert(  # an instance of a series that does not exist
            connection,
            filing._insert_ignore(connection, filing.INSTANCES, "sop_instance_uid", "id"),
            [
                {
                    "series_id": 999_999,
                    "sop_instance_uid": "1.2.3",
                    "sop_class_uid": row.sop_class_uid,
                    "calling_ae_title": "Private^Patient",
                    "transfer_syntax_uid": row.transfer_syntax_uid,
                    "size_bytes": 1,
                    "content_digest": "0" * 64,
                    "spool_path": "/x.dcm",
                }
            ],
        )
    assert "Private^Patient" not in str(raised.value)


def test_a_column_left_out_gets_its_default_as_sqlalchemy_would_give_it(engine: Engine) -> None:
    row = _received(1)
    with engine.begin() as connection:
        filing.file_instances(connection, [row], VERSION)
        series_id = connection.execute(select(Series.id)).scalar_one()
        filing._insert(  # received_at left out: its default (now) is filled in
            connection,
            filing._insert_ignore(connection, filing.INSTANCES, "sop_instance_uid", "id"),
            [
                {
                    "series_id": series_id,
                    "sop_instance_uid": "1.2.3",
                    "sop_class_uid": row.sop_class_uid,
                    "calling_ae_title": "MODALITY",
                    "transfer_syntax_uid": row.transfer_syntax_uid,
                    "size_bytes": 1,
                    "content_digest": "0" * 64,
                    "spool_path": "/x.dcm",
                }
            ],
        )
    with make_session_factory(engine)() as session:
        at = session.scalars(
            select(Instance.received_at).where(Instance.sop_instance_uid == "1.2.3")
        ).one()
    assert at.tzinfo is not None
