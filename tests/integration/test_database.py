"""The tracking database on real SQLite and PostgreSQL: migrations, states, constraints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import migrate
from pipeline.db.models import (
    AuditEvent,
    Base,
    Export,
    Instance,
    Job,
    JobEvent,
    Lesion,
    Result,
    Review,
    Series,
    Study,
)
from pipeline.db.session import make_engine, make_session_factory
from pipeline.db.states import ExportState, JobState, ReviewState
from pipeline.db.types import utcnow

ALL_TABLES = {table.name for table in Base.metadata.sorted_tables}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == migrate.head_revision()
    assert _tables(database_url) == ALL_TABLES

    migrate.downgrade(database_url, "base")
    assert migrate.current_revision(database_url) is None
    assert _tables(database_url) == set()

    migrate.upgrade(database_url)
    assert _tables(database_url) == ALL_TABLES
    migrate.check(database_url)


def test_revision_0003_drops_the_pixel_digest_and_keeps_the_instances(database_url: str) -> None:
    """A database filled at revision 0002 keeps every instance row through 0003 (a table copy on
    SQLite) and back; the pixel digests are not recomputed on the way down."""
    migrate.upgrade(database_url, "0002")
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, created_at, updated_at) "
                    "VALUES (1, '1.2.3', :now, :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO series (id, study_id, series_instance_uid, created_at, updated_at)"
                    " VALUES (1, 1, '1.2.3.4', :now, :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO instances (id, series_id, sop_instance_uid, sop_class_uid, "
                    "calling_ae_title, transfer_syntax_uid, size_bytes, content_digest, "
                    "pixel_digest, spool_path, number_of_frames, received_at) VALUES (7, 1, "
                    "'1.2.3.4.5', '1.2.840.10008.5.1.4.1.1.20', 'MODALITY', '1.2.840.10008.1.2.1',"
                    " 1049876, :content, :pixels, '/spool/a.dcm', 2, :now)"
                ),
                {"content": "c" * 64, "pixels": "p" * 64, "now": now},
            )
        wanted = "SELECT id, sop_instance_uid, content_digest, spool_path FROM instances"
        migrate.upgrade(database_url)
        assert "pixel_digest" not in {c["name"] for c in inspect(engine).get_columns("instances")}
        with engine.connect() as connection:
            assert connection.execute(text(wanted)).all() == [
                (7, "1.2.3.4.5", "c" * 64, "/spool/a.dcm")
            ]
        migrate.check(database_url)
        migrate.downgrade(database_url, "0002")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, pixel_digest FROM instances")).all() == [
                (7, None)
            ]
    finally:
        engine.dispose()


def test_alembic_check_finds_no_drift(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.check(database_url)  # raises SchemaDriftError on any difference


def test_check_reports_an_unmigrated_database(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    migrate.downgrade(sqlite_url, "base")
    with pytest.raises(Exception, match="not up to date"):
        migrate.check(sqlite_url)


def test_downgrade_leaves_no_types_behind_on_postgresql(postgres_url: str) -> None:
    # FACTS.md: a native enum type would survive `downgrade base`; states are plain strings.
    migrate.upgrade(postgres_url)
    migrate.downgrade(postgres_url, "base")
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            types = connection.exec_driver_sql(
                "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'e'"
            ).all()
    finally:
        engine.dispose()
    assert types == []


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def _series(session: Session, suffix: str = "1") -> Series:
    study = Study(study_instance_uid=f"1.2.826.0.1.3680043.8.498.1{suffix}")
    series = Series(study=study, series_instance_uid=f"1.2.826.0.1.3680043.8.498.2{suffix}")
    session.add(series)
    return series


def _job(series: Series, key: str, state: JobState = JobState.RECEIVED) -> Job:
    return Job(series=series, model_version="msanet-test", idempotency_key=key, state=state)


@pytest.mark.parametrize("state", list(JobState))
def test_every_job_state_round_trips(sessions: sessionmaker[Session], state: JobState) -> None:
    with sessions.begin() as session:
        job = _job(_series(session), key=f"key-{state}", state=state)
        session.add(job)
        session.add(JobEvent(job=job, from_state=None, to_state=state, detail="test"))
    with sessions() as session:
        loaded = session.scalars(select(Job)).one()
        assert loaded.state is state
        assert loaded.events[0].to_state is state
        raw = session.connection().exec_driver_sql("SELECT state FROM jobs").scalar_one()
        assert raw == state.value  # stored as the plain lowercase string


@pytest.mark.parametrize("state", list(ExportState))
def test_every_export_state_round_trips(
    sessions: sessionmaker[Session], state: ExportState
) -> None:
    with sessions.begin() as session:
        job = _job(_series(session), key="k")
        session.add(
            Export(
                job=job,
                destination="pacs",
                sop_instance_uid="1.2.3",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                path="/tmp/seg.dcm",
                state=state,
            )
        )
    with sessions() as session:
        assert session.scalars(select(Export.state)).one() is state


@pytest.mark.parametrize("state", list(ReviewState))
def test_every_review_state_round_trips(
    sessions: sessionmaker[Session], state: ReviewState
) -> None:
    with sessions.begin() as session:
        session.add(Review(job=_job(_series(session), key="k"), state=state, reviewer="dr.a"))
    with sessions() as session:
        assert session.scalars(select(Review.state)).one() is state


def test_idempotency_key_is_unique_in_the_database(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(_job(_series(session), key="same-key"))
    with sessions() as session:
        session.add(_job(session.scalars(select(Series)).one(), key="same-key"))
        with pytest.raises(IntegrityError):
            session.commit()
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_sop_instance_uid_is_unique_in_the_database(sessions: sessionmaker[Session]) -> None:
    def instance(series: Series) -> Instance:
        return Instance(
            series=series,
            sop_instance_uid="1.2.3.4",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
            calling_ae_title="ECAM",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            size_bytes=10,
            content_digest="0" * 64,
            spool_path="/spool/x.dcm",
        )

    with sessions.begin() as session:
        session.add(instance(_series(session)))
    with sessions() as session:
        session.add(instance(session.scalars(select(Series)).one()))
        with pytest.raises(IntegrityError):
            session.commit()


def test_timestamps_come_back_aware_utc(sessions: sessionmaker[Session]) -> None:
    moment = datetime(2026, 11, 21, 9, 30, tzinfo=UTC) + timedelta(microseconds=5)
    with sessions.begin() as session:
        job = _job(_series(session), key="k")
        job.lease_expires_at = moment
        session.add(job)
    with sessions() as session:
        loaded = session.scalars(select(Job)).one()
        assert loaded.lease_expires_at == moment
        assert loaded.lease_expires_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        job = _job(_series(session), key="k")
        job.lease_expires_at = datetime(2026, 1, 1)  # naive on purpose
        session.add(job)
        with pytest.raises(StatementError, match="naive datetime"):
            session.commit()


def test_full_result_tree_and_cascade(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        job = _job(_series(session), key="k", state=JobState.SEGMENTED)
        result = Result(
            job=job,
            view="anterior",
            source_sop_instance_uid="1.2.3",
            source_frame_number=1,
            seg_series_instance_uid="1.2.4",
            seg_sop_instance_uid="1.2.5",
            seg_path="/results/seg.dcm",
            crop_top=120,
            lesion_count=1,
            lesion_area_mm2=51.08,
        )
        result.lesions.append(
            Lesion(
                label=1,
                area_px=10,
                area_mm2=51.08,
                centroid_row=300.5,
                centroid_column=120.0,
                bbox_row_min=299,
                bbox_column_min=118,
                bbox_row_max=302,
                bbox_column_max=122,
                max_probability=0.93,
            )
        )
        session.add(result)
        session.add(AuditEvent(actor="admin", action="jobs.reprocess", target_type="job"))
    with sessions.begin() as session:
        loaded = session.scalars(select(Job)).one()
        assert loaded.results[0].lesions[0].area_mm2 == pytest.approx(51.08)
        session.delete(loaded)
    with sessions() as session:
        assert session.scalars(select(Lesion)).all() == []
        assert session.scalars(select(Result)).all() == []
        assert len(session.scalars(select(AuditEvent)).all()) == 1


def test_utcnow_is_aware() -> None:
    assert utcnow().tzinfo is UTC
