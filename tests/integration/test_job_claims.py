"""Job claims on PostgreSQL: the state moving ``received → queued`` between a worker's read and
its conditional UPDATE (the producer marks the job queued after sending the task, and a fast
worker reads it first) must not make the worker drop the job as done."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text, update
from sqlalchemy.orm import Session

from pipeline.db import migrate
from pipeline.db.jobs import Claim, claim_job
from pipeline.db.models import Job
from pipeline.db.states import JobState
from tests.integration.test_cli_admin import Seeder


def test_a_job_marked_queued_during_the_claim_is_still_claimed(
    postgres_url: str, tmp_path: Path
) -> None:
    migrate.upgrade(postgres_url)
    seeder = Seeder(postgres_url, tmp_path)
    try:
        job_id = seeder.study(JobState.RECEIVED).job_id
        producer = seeder.engine.connect()
        moved: list[bool] = []

        def mark_queued_first(conn: object, cursor: object, statement: str, *_: object) -> None:
            # Just before the worker's first UPDATE: the producer's mark_queued commits.
            if statement.lstrip().upper().startswith("UPDATE JOBS") and not moved:
                moved.append(True)
                with producer.begin():
                    producer.execute(
                        update(Job).where(Job.id == job_id).values(state=JobState.QUEUED)
                    )

        event.listen(seeder.engine, "before_cursor_execute", mark_queued_first)
        try:
            with Session(seeder.engine) as session, session.begin():
                claim = claim_job(session, job_id, "host:1", 60)
        finally:
            event.remove(seeder.engine, "before_cursor_execute", mark_queued_first)
            producer.close()
        assert moved == [True]
        assert claim is Claim.CLAIMED
        with seeder.engine.connect() as connection:
            state, owner = connection.execute(
                text("SELECT state, lease_owner FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
        assert (state, owner) == ("running", "host:1")
    finally:
        seeder.engine.dispose()


def test_a_job_held_by_a_live_worker_is_not_taken(postgres_url: str, tmp_path: Path) -> None:
    migrate.upgrade(postgres_url)
    seeder = Seeder(postgres_url, tmp_path)
    try:
        job_id = seeder.study(JobState.QUEUED).job_id
        with Session(seeder.engine) as session, session.begin():
            assert claim_job(session, job_id, "host:1", 60) is Claim.CLAIMED
        with Session(seeder.engine) as session, session.begin():
            assert claim_job(session, job_id, "host:2", 60) is Claim.HELD
    finally:
        seeder.engine.dispose()
