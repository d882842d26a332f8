"""The admin commands (studies, jobs, exports, review, peers, stats, purge) over a real database
(SQLite and PostgreSQL), real Redis for the tasks they send, and a real dcmtk peer for echo.

Rows are seeded directly with the models; the commands run in-process through Typer's runner
(and once as the real ``bonescan`` process), and their output, exit codes, rows, audit trail,
files and broker messages are checked.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import Result
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.db import migrate
from pipeline.db.ingest import combined_content_digest, idempotency_key
from pipeline.db.models import (
    AuditEvent,
    Export,
    Instance,
    Job,
    JobEvent,
    Lesion,
    Review,
    Series,
    Study,
)
from pipeline.db.models import (
    Result as ResultRow,
)
from pipeline.db.session import make_engine, make_session_factory
from pipeline.db.states import ExportState, JobState, ReviewState
from pipeline.settings import get_settings
from tests.conftest import free_port

runner = CliRunner()
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NM_CLASS = "1.2.840.10008.5.1.4.1.1.20"
ROOT = "1.2.826.0.1.3680043.8.498"
CHAIN = [JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING, JobState.SEGMENTED]
# Seconds between the events of a seeded job: received→queued→running→segmented→exported.
STEPS = (1.0, 2.0, 7.0, 3.0)


# ---------------------------------------------------------------------------------------------
# Running the command


def bonescan(env: dict[str, str], *args: str) -> Result:
    """``bonescan ARGS`` in-process with ``env``; settings are read afresh for each call."""
    get_settings.cache_clear()
    try:
        return runner.invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def assert_one_line_error(result: Result, *words: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# Seeding


@dataclass(frozen=True)
class Seeded:
    job_id: int
    study_uid: str
    series_uid: str
    files: list[Path]


class Seeder:
    """Studies with one series, one instance and one job in a given state, written directly."""

    def __init__(self, url: str, data_dir: Path) -> None:
        # A long connect timeout: on a loaded 2-core host a PostgreSQL connect can take > 5 s.
        self.engine: Engine = make_engine(url, connect_timeout_s=60)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.data_dir = data_dir
        self.count = 0

    def _file(self, *parts: str) -> Path:
        path = self.data_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1000)
        return path

    def study(
        self,
        state: JobState = JobState.EXPORTED,
        *,
        at: datetime | None = None,
        steps: tuple[float, ...] = STEPS,
        calling_ae: str = "MODALITY",
        reviewed: bool = False,
        skipped: bool = False,
        patient: str = "DOE^JANE",
    ) -> Seeded:
        self.count += 1
        n = self.count
        start = at or datetime.now(UTC) - timedelta(minutes=5)
        study_uid, series_uid, sop_uid = f"{ROOT}.{n}", f"{ROOT}.{n}.1", f"{ROOT}.{n}.1.1"
        spool = self._file("spool", study_uid, series_uid, f"{sop_uid}.dcm")
        files = [spool]
        with self.sessions.begin() as session:
            study = Study(
                study_instance_uid=study_uid,
                patient_name=patient,
                patient_id=f"PID-{n:04d}",
                study_date="20260105",
                study_description="WB BONE",
                created_at=start,
                updated_at=start,
            )
            series = Series(
                study=study,
                series_instance_uid=series_uid,
                modality="NM",
                series_number=1,
                created_at=start,
                updated_at=start,
            )
            instance = Instance(
                series=series,
                sop_instance_uid=sop_uid,
                sop_class_uid=NM_CLASS,
                calling_ae_title=calling_ae,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                size_bytes=1000,
                content_digest=f"{n:064d}",
                spool_path=str(spool),
                number_of_frames=2,
                skip_reason="modality CT is not NM" if skipped else None,
                received_at=start,
            )
            session.add_all([study, series, instance])
            session.flush()
            job = Job(
                series_id=series.id,
                model_version="msanet-v1",
                generation=0,
                idempotency_key=idempotency_key(
                    [sop_uid], combined_content_digest([instance]), "msanet-v1", 0
                ),
                state=state,
                created_at=start,
                error="boom" if state == JobState.FAILED else None,
            )
            session.add(job)
            session.flush()
            last = self._events(session, job, state, start, steps)
            job.updated_at = last
            if state in {JobState.SEGMENTED, JobState.EXPORTED, JobState.EXPORT_FAILED}:
                files += self._results(session, job, state, last)
            if reviewed:
                session.add(Review(job_id=job.id, state=ReviewState.ACCEPTED, reviewer="dr"))
            job_id = job.id
        return Seeded(job_id, study_uid, series_uid, files)

    def _events(
        self,
        session: Session,
        job: Job,
        state: JobState,
        start: datetime,
        steps: tuple[float, ...],
    ) -> datetime:
        if state == JobState.SKIPPED:
            path = [JobState.SKIPPED]
        elif state == JobState.FAILED:
            path = [*CHAIN[:3], JobState.FAILED]
        elif state == JobState.EXPORT_FAILED:
            path = [*CHAIN, JobState.EXPORT_FAILED]
        elif state == JobState.EXPORTED:
            path = [*CHAIN, JobState.EXPORTED]
        else:
            path = CHAIN[: CHAIN.index(state) + 1]
        at, previous = start, None
        for index, to_state in enumerate(path):
            if index:
                at += timedelta(seconds=steps[min(index - 1, len(steps) - 1)])
            session.add(JobEvent(job_id=job.id, from_state=previous, to_state=to_state, at=at))
            previous = to_state
        return at

    def _results(self, session: Session, job: Job, state: JobState, at: datetime) -> list[Path]:
        seg = self._file("results", str(job.id), "seg.dcm")
        sr = self._file("results", str(job.id), "sr.dcm")
        for view, count in (("anterior", 2), ("posterior", 1)):
            result = ResultRow(
                job_id=job.id,
                view=view,
                source_sop_instance_uid=f"{ROOT}.{self.count}.1.1",
                source_frame_number=1 if view == "anterior" else 2,
                seg_series_instance_uid=f"{ROOT}.9{job.id}",
                seg_sop_instance_uid=f"{ROOT}.9{job.id}.1",
                seg_path=str(seg),
                sr_sop_instance_uid=f"{ROOT}.8{job.id}.1",
                sr_path=str(sr),
                crop_top=100,
                lesion_count=count,
                lesion_area_mm2=10.0 * count,
                created_at=at,
            )
            result.lesions = [
                Lesion(
                    label=k + 1,
                    area_px=2,
                    area_mm2=10.0,
                    centroid_row=300.0 + k,
                    centroid_column=120.0,
                    bbox_row_min=299,
                    bbox_column_min=119,
                    bbox_row_max=301,
                    bbox_column_max=121,
                    max_probability=0.9,
                )
                for k in range(count)
            ]
            session.add(result)
        export_state = {
            JobState.EXPORTED: ExportState.DELIVERED,
            JobState.EXPORT_FAILED: ExportState.FAILED,
        }.get(state, ExportState.PENDING)
        session.add(
            Export(
                job_id=job.id,
                destination="pacs",
                sop_instance_uid=f"{ROOT}.9{job.id}.1",
                sop_class_uid=SEG_CLASS,
                path=str(seg),
                state=export_state,
                attempts=8 if export_state == ExportState.FAILED else 1,
                last_error="no association" if export_state == ExportState.FAILED else None,
                created_at=at,
                updated_at=at,
            )
        )
        return [seg, sr]

    def scalar(self, query: Any) -> Any:
        with self.sessions() as session:
            return session.scalar(query)

    def rows(self, query: Any) -> list[Any]:
        with self.sessions() as session:
            return list(session.scalars(query))

    def audits(self, action: str) -> list[AuditEvent]:
        return self.rows(select(AuditEvent).where(AuditEvent.action == action))


@dataclass
class Admin:
    env: dict[str, str]
    db: Seeder
    data_dir: Path


def _admin(clean_env: dict[str, str], url: str, **extra: str) -> Iterator[Admin]:
    migrate.upgrade(url)
    data_dir = Path(clean_env["BONESCAN_DATA_DIR"])
    # Log level ERROR: stderr then holds only what the command itself says (the model-version
    # lookup warns while no checkpoint is shipped).
    env = {
        **clean_env,
        "BONESCAN_DATABASE_URL": url,
        "BONESCAN_LOG_LEVEL": "ERROR",
        "USER": "admin-tester",
        **extra,
    }
    seeder = Seeder(url, data_dir)
    try:
        yield Admin(env, seeder, data_dir)
    finally:
        seeder.engine.dispose()


@pytest.fixture
def admin(clean_env: dict[str, str], database_url: str, redis_url: str) -> Iterator[Admin]:
    """A migrated database on each backend and Redis as the broker."""
    yield from _admin(clean_env, database_url, BONESCAN_BROKER_URL=redis_url)


@pytest.fixture
def pg_admin(clean_env: dict[str, str], postgres_url: str, redis_url: str) -> Iterator[Admin]:
    """PostgreSQL only, for what behaves the same on both backends."""
    yield from _admin(clean_env, postgres_url, BONESCAN_BROKER_URL=redis_url)


def queued(redis_url: str, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of the messages waiting in ``queue``: kombu keeps them as JSON in a
    Redis list named after the queue, the Celery body base64-encoded [args, kwargs, embed]."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for item in raw:
        message = json.loads(item)
        body = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], body[1]))
    return messages


# ---------------------------------------------------------------------------------------------
# studies / jobs: list and show


def test_studies_and_jobs_list_and_show_as_tables_and_json(admin: Admin) -> None:
    done = admin.db.study(JobState.EXPORTED, calling_ae="GAMMA1")
    failed = admin.db.study(JobState.FAILED, calling_ae="GAMMA2", patient="ROE^RICHARD")
    env = admin.env

    table = ok(bonescan(env, "studies", "list"))
    assert done.study_uid in table
    assert failed.study_uid in table
    assert "ROE^RICHARD" in table
    hidden = ok(bonescan(env, "studies", "list", "--no-phi"))
    assert "ROE^RICHARD" not in hidden
    assert "PID-0002" not in hidden
    studies = json.loads(ok(bonescan(env, "studies", "list", "--json", "--since", "1h")))
    assert [s["study_instance_uid"] for s in studies] == [failed.study_uid, done.study_uid]
    assert studies[0]["latest_job_state"] == "failed"
    assert studies[1]["series"] == studies[1]["jobs"] == 1
    assert json.loads(ok(bonescan(env, "studies", "list", "--json", "--since", "2099-01-01"))) == []

    shown = json.loads(ok(bonescan(env, "studies", "show", done.study_uid, "--json", "--no-phi")))
    assert "patient_name" not in shown
    assert shown["series"][0]["instances"] == 1
    assert shown["jobs"][0]["lesions"] == {"anterior": 2, "posterior": 1}
    assert "anterior 2, posterior 1" in ok(bonescan(env, "studies", "show", done.study_uid))

    jobs = json.loads(ok(bonescan(env, "jobs", "list", "--state", "failed", "--json")))
    assert [j["id"] for j in jobs] == [failed.job_id]
    assert jobs[0]["error"] == "boom"
    by_ae = json.loads(ok(bonescan(env, "jobs", "list", "--calling-ae", "GAMMA1", "--json")))
    assert [j["id"] for j in by_ae] == [done.job_id]
    assert len(json.loads(ok(bonescan(env, "jobs", "list", "--since", "2h", "--json")))) == 2
    assert json.loads(ok(bonescan(env, "jobs", "list", "--limit", "1", "--json")))[0]["id"] == (
        failed.job_id
    )

    detail = json.loads(ok(bonescan(env, "jobs", "show", str(done.job_id), "--json")))
    assert [e["to_state"] for e in detail["events"]] == [
        "received",
        "queued",
        "running",
        "segmented",
        "exported",
    ]
    assert [e["since_previous_s"] for e in detail["events"]] == [None, *STEPS]
    assert detail["stage_durations_s"] == {
        "received→queued": 1.0,
        "queued→running": 2.0,
        "running→segmented": 7.0,
        "segmented→exported": 3.0,
        "received→exported": 13.0,
    }
    assert sorted(r["view"] for r in detail["results"]) == ["anterior", "posterior"]
    assert sum(len(r["lesions"]) for r in detail["results"]) == 3
    assert detail["exports"][0]["state"] == "delivered"
    text = ok(bonescan(env, "jobs", "show", str(done.job_id)))
    for section in ("events", "stage durations", "results", "lesions", "exports", "reviews"):
        assert section in text
    assert "DOE^JANE" in text
    assert "DOE^JANE" not in ok(bonescan(env, "jobs", "show", str(done.job_id), "--no-phi"))


# ---------------------------------------------------------------------------------------------
# jobs reprocess


def test_reprocess_opens_the_next_generation_with_the_new_weights_and_sends_it(
    admin: Admin, redis_url: str, tmp_path: Path
) -> None:
    target = admin.db.study(JobState.EXPORTED)
    other = admin.db.study(JobState.EXPORTED)
    weights = tmp_path / "new.pt"
    weights.write_bytes(b"not read: the sidecar names the version")
    (tmp_path / "new.pt.json").write_text('{"model_version": "msanet-v2"}')

    out = ok(
        bonescan(
            admin.env, "jobs", "reprocess", "--study", target.study_uid, "--weights", str(weights)
        )
    )
    assert "reprocessing 1 series with msanet-v2" in out
    jobs = admin.db.rows(select(Job).where(Job.id > other.job_id))
    assert len(jobs) == 1
    new = jobs[0]
    old = admin.db.scalar(select(Job).where(Job.id == target.job_id))
    assert new.series_id == old.series_id
    assert new.generation == old.generation + 1
    assert new.model_version == "msanet-v2"
    assert new.weights_path == str(weights.resolve())
    assert new.idempotency_key != old.idempotency_key
    instance = admin.db.scalar(select(Instance).where(Instance.series_id == new.series_id))
    assert new.idempotency_key == idempotency_key(
        [instance.sop_instance_uid], combined_content_digest([instance]), "msanet-v2", 1
    )
    assert queued(redis_url, "segment") == [("bonescan.segment_series", {"job_id": new.id})]
    events = admin.db.rows(
        select(JobEvent.to_state).where(JobEvent.job_id == new.id).order_by(JobEvent.id)
    )
    assert events[-1] == JobState.QUEUED
    assert set(events) == {JobState.RECEIVED, JobState.QUEUED}
    assert new.state == JobState.QUEUED
    # The old job and its results are untouched (the worker supersedes them, not the CLI).
    assert old.state == JobState.EXPORTED
    assert admin.db.scalar(select(func.count(ResultRow.id)).where(ResultRow.job_id == old.id)) == 2
    (entry,) = admin.db.audits("jobs.reprocess")
    assert entry.actor == "admin-tester"
    assert entry.target_id == str(new.id)
    detail = json.loads(entry.detail or "{}")
    assert detail["generation"] == 1
    assert detail["previous_job_id"] == old.id
    assert "DOE" not in (entry.detail or "")

    # The new job is in flight now: reprocessing the series again is refused.
    again = bonescan(admin.env, "jobs", "reprocess", "--series", target.series_uid)
    assert_one_line_error(again, "nothing to reprocess", f"job {new.id} is still queued")


def test_reprocess_dry_run_changes_nothing(pg_admin: Admin, redis_url: str) -> None:
    failed = pg_admin.db.study(JobState.FAILED)
    pg_admin.db.study(JobState.EXPORTED)
    out = ok(bonescan(pg_admin.env, "jobs", "reprocess", "--state", "failed", "--dry-run"))
    assert failed.series_uid in out
    assert "dry run: 1 series would be reprocessed; nothing changed" in out
    assert pg_admin.db.scalar(select(func.count(Job.id))) == 2
    assert pg_admin.db.scalar(select(func.count(AuditEvent.id))) == 0
    assert queued(redis_url, "segment") == []


def test_reprocess_refuses_when_nothing_matches_and_leaves_out_running_or_skipped_series(
    pg_admin: Admin,
) -> None:
    env = pg_admin.env
    running = pg_admin.db.study(JobState.RUNNING)
    skipped = pg_admin.db.study(JobState.SKIPPED, skipped=True)
    assert_one_line_error(bonescan(env, "jobs", "reprocess"), "--study", "--series")
    assert_one_line_error(
        bonescan(env, "jobs", "reprocess", "--study", "1.2.3.4"), "nothing to reprocess"
    )
    assert_one_line_error(
        bonescan(env, "jobs", "reprocess", "--series", running.series_uid), "still running"
    )
    assert_one_line_error(
        bonescan(env, "jobs", "reprocess", "--study", skipped.study_uid), "skipped series"
    )
    assert_one_line_error(
        bonescan(env, "jobs", "reprocess", "--from", "2026-13-01"), "--from", "2026-13-01"
    )
    assert_one_line_error(
        bonescan(env, "jobs", "reprocess", "--state", "done"), "unknown job state"
    )
    assert_one_line_error(
        bonescan(env, "jobs", "reprocess", "--state", "failed", "--weights", "/nonexistent.pt"),
        "--weights",
    )
    assert pg_admin.db.scalar(select(func.count(Job.id))) == 2


def test_reprocess_with_the_broker_down_leaves_the_job_received_and_says_so(
    clean_env: dict[str, str], postgres_url: str
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    for setup in _admin(clean_env, postgres_url, BONESCAN_BROKER_URL=down):
        old = setup.db.study(JobState.FAILED, at=datetime(2026, 1, 5, 10, tzinfo=UTC))
        result = bonescan(
            setup.env, "jobs", "reprocess", "--from", "2026-01-05", "--to", "2026-01-05"
        )
        out = ok(result)
        assert "reprocessing 1 series" in out
        warning = result.stderr.strip().splitlines()
        assert len(warning) == 1
        assert warning[0].startswith("warning: broker")
        assert "stay received" in warning[0]
        new = setup.db.scalar(select(Job).where(Job.id != old.job_id))
        assert new.state == JobState.RECEIVED
        assert new.generation == 1
        assert len(setup.db.audits("jobs.reprocess")) == 1


# ---------------------------------------------------------------------------------------------
# exports


def test_exports_retry_resets_the_export_and_its_job_and_sends_the_task(
    admin: Admin, redis_url: str
) -> None:
    failed = admin.db.study(JobState.EXPORT_FAILED)
    admin.db.study(JobState.EXPORTED)
    rows = json.loads(ok(bonescan(admin.env, "exports", "list", "--state", "failed", "--json")))
    assert [row["job_id"] for row in rows] == [failed.job_id]
    assert rows[0]["attempts"] == 8
    assert rows[0]["last_error"] == "no association"
    assert "no association" in ok(bonescan(admin.env, "exports", "list"))
    export_id = rows[0]["id"]

    out = ok(bonescan(admin.env, "exports", "retry", "--all-failed"))
    assert f"retrying exports {export_id}" in out
    export = admin.db.scalar(select(Export).where(Export.id == export_id))
    assert export.state == ExportState.PENDING
    assert export.attempts == 0
    job = admin.db.scalar(select(Job).where(Job.id == failed.job_id))
    assert job.state == JobState.SEGMENTED
    last = admin.db.rows(
        select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc()).limit(1)
    )[0]
    assert (last.from_state, last.to_state) == (JobState.EXPORT_FAILED, JobState.SEGMENTED)
    assert queued(redis_url, "export") == [("bonescan.export_result", {"export_id": export_id})]
    (entry,) = admin.db.audits("exports.retry")
    assert json.loads(entry.detail or "{}")["previous_attempts"] == 8

    assert_one_line_error(bonescan(admin.env, "exports", "retry", "--all-failed"), "no failed")
    delivered = json.loads(
        ok(bonescan(admin.env, "exports", "list", "--state", "delivered", "--json"))
    )
    assert_one_line_error(
        bonescan(admin.env, "exports", "retry", str(delivered[0]["id"])), "delivered"
    )
    assert_one_line_error(bonescan(admin.env, "exports", "retry", "999"), "no export", "999")
    assert_one_line_error(bonescan(admin.env, "exports", "retry"), "--all-failed")


# ---------------------------------------------------------------------------------------------
# review


def test_review_accept_and_reject_write_reviews_and_audit_rows(admin: Admin) -> None:
    done = admin.db.study(JobState.EXPORTED)
    env = admin.env
    out = ok(bonescan(env, "review", "accept", str(done.job_id), "--comment", "two rib mets"))
    assert f"job {done.job_id} accepted by admin-tester" in out
    ok(bonescan(env, "review", "reject", str(done.job_id), "--comment", "FP", "--reviewer", "dr.b"))
    reviews = admin.db.rows(select(Review).order_by(Review.id))
    assert [(r.state, r.reviewer, r.comment) for r in reviews] == [
        (ReviewState.ACCEPTED, "admin-tester", "two rib mets"),
        (ReviewState.REJECTED, "dr.b", "FP"),
    ]
    assert [a.actor for a in admin.db.audits("review.accept")] == ["admin-tester"]
    assert [a.actor for a in admin.db.audits("review.reject")] == ["dr.b"]
    shown = json.loads(ok(bonescan(env, "jobs", "show", str(done.job_id), "--json")))
    assert [r["state"] for r in shown["reviews"]] == ["accepted", "rejected"]

    assert_one_line_error(bonescan(env, "review", "accept", "4242", "--comment", "x"), "4242")
    assert_one_line_error(bonescan(env, "review", "accept", str(done.job_id)), "--comment")
    failed = admin.db.study(JobState.FAILED)
    assert_one_line_error(
        bonescan(env, "review", "reject", str(failed.job_id), "--comment", "x"), "no result"
    )


# ---------------------------------------------------------------------------------------------
# purge


def test_purge_keeps_unreviewed_work_without_force_and_removes_files_with_it(admin: Admin) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=40)
    reviewed = admin.db.study(JobState.EXPORTED, at=long_ago, reviewed=True)
    unreviewed = admin.db.study(JobState.EXPORTED, at=long_ago)
    skipped = admin.db.study(JobState.SKIPPED, at=long_ago, skipped=True)
    recent = admin.db.study(JobState.EXPORTED, reviewed=True)
    stuck = admin.db.study(JobState.EXPORT_FAILED, at=long_ago, reviewed=True)
    env = admin.env

    dry = ok(bonescan(env, "purge", "--older-than", "30d", "--dry-run"))
    assert f"would remove study {reviewed.study_uid}" in dry
    assert f"kept study {unreviewed.study_uid}" in dry
    assert all(path.exists() for path in reviewed.files)
    assert admin.db.scalar(select(func.count(Study.id))) == 5

    out = ok(bonescan(env, "purge", "--older-than", "30d"))
    assert f"removed study {reviewed.study_uid}: 1 jobs, 3 files" in out  # spool, SEG, SR
    assert f"removed study {skipped.study_uid}" in out
    assert f"kept study {unreviewed.study_uid}" in out
    assert not any(path.exists() for path in reviewed.files + skipped.files)
    assert all(path.exists() for path in unreviewed.files + recent.files + stuck.files)
    left = set(admin.db.rows(select(Study.study_instance_uid)))
    assert left == {unreviewed.study_uid, recent.study_uid, stuck.study_uid}
    for model in (Series, Instance, Job, JobEvent, ResultRow, Lesion, Export, Review):
        assert admin.db.scalar(select(func.count()).select_from(model)) > 0
    assert admin.db.scalar(select(func.count(Job.id))) == 3  # cascaded with their studies
    assert {a.target_id for a in admin.db.audits("purge")} == {
        reviewed.study_uid,
        skipped.study_uid,
    }
    assert not (admin.data_dir / "spool" / reviewed.study_uid).exists()

    forced = ok(bonescan(env, "purge", "--older-than", "30d", "--force"))
    assert f"removed study {unreviewed.study_uid}" in forced
    assert not any(path.exists() for path in unreviewed.files)
    assert set(admin.db.rows(select(Study.study_instance_uid))) == {
        recent.study_uid,
        stuck.study_uid,
    }
    assert "nothing to purge" in ok(bonescan(env, "purge", "--older-than", "30d", "--force"))
    assert_one_line_error(bonescan(env, "purge", "--older-than", "a month"), "--older-than")


# ---------------------------------------------------------------------------------------------
# stats


def test_stats_counts_states_and_stage_percentiles(pg_admin: Admin) -> None:
    for seconds in (1.0, 2.0, 3.0):
        pg_admin.db.study(JobState.EXPORTED, steps=(seconds, 2.0, 10.0 * seconds, 1.0))
    pg_admin.db.study(JobState.FAILED)
    pg_admin.db.study(JobState.EXPORT_FAILED)
    result = json.loads(ok(bonescan(pg_admin.env, "stats", "--json")))
    assert result["jobs"]["exported"] == 3
    assert result["jobs"]["failed"] == 1
    assert result["jobs"]["queued"] == 0
    assert result["exports"] == {"pending": 0, "sending": 0, "delivered": 3, "failed": 1}
    latency = result["latency"]
    assert latency["received→queued"]["count"] == 5
    assert latency["segmented→exported"]["count"] == 3
    assert latency["running→segmented"]["count"] == 4  # 10, 20, 30 and the export_failed 7
    assert latency["running→segmented"]["p50_s"] == pytest.approx(15.0)
    assert latency["received→exported"]["p50_s"] == pytest.approx(25.0)  # 14, 25, 36
    assert latency["received→exported"]["p95_s"] == pytest.approx(34.9)
    table = ok(bonescan(pg_admin.env, "stats", "--since", "1d"))
    assert "received→queued" in table
    assert "p95" in table
    empty = json.loads(ok(bonescan(pg_admin.env, "stats", "--since", "2099-01-01", "--json")))
    assert empty["latency"] == {}
    assert_one_line_error(bonescan(pg_admin.env, "stats", "--since", "yesterday"), "--since")


# ---------------------------------------------------------------------------------------------
# peers


@pytest.fixture
def storescp() -> Iterator[int]:
    """dcmtk's storescp as a live DICOM peer on 127.0.0.1."""
    binary = shutil.which("storescp", path="/usr/bin")
    if binary is None:
        pytest.fail("dcmtk is not installed: apt-get install dcmtk")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--aetitle", "PEER", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("storescp did not start listening within 10 s")
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_peers_list_and_echo(clean_env: dict[str, str], storescp: int) -> None:
    env = {
        **clean_env,
        "BONESCAN_DESTINATIONS": json.dumps(
            [
                {"name": "pacs", "ae_title": "PEER", "host": "127.0.0.1", "port": storescp},
                {"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": free_port()},
            ]
        ),
    }
    peers = json.loads(ok(bonescan(env, "peers", "list", "--json")))
    assert [p["name"] for p in peers] == ["pacs", "gone"]
    assert "PEER" in ok(bonescan(env, "peers", "list"))
    assert "C-ECHO ok" in ok(bonescan(env, "peers", "echo", "pacs"))
    assert_one_line_error(bonescan(env, "peers", "echo", "gone", "--timeout", "2"), "gone")
    assert_one_line_error(bonescan(env, "peers", "echo", "nope"), "nope", "pacs")


# ---------------------------------------------------------------------------------------------
# errors and the real process


def test_bad_inputs_are_one_line_errors(pg_admin: Admin, clean_env: dict[str, str]) -> None:
    env = pg_admin.env
    assert_one_line_error(bonescan(env, "jobs", "show", "12345"), "no job", "12345")
    assert_one_line_error(bonescan(env, "jobs", "show", "abc"), "job id", "abc")
    assert_one_line_error(bonescan(env, "jobs", "list", "--since", "last week"), "--since")
    assert_one_line_error(bonescan(env, "jobs", "list", "--state", "lost"), "unknown job state")
    assert_one_line_error(bonescan(env, "exports", "list", "--state", "x"), "export state")
    assert_one_line_error(bonescan(env, "studies", "show", "1.2.3"), "no study", "1.2.3")
    assert_one_line_error(bonescan(env, "studies", "list", "--since", "2026-02-30"), "--since")
    assert not pg_admin.db.audits("jobs.reprocess")
    # No BONESCAN_DATABASE_URL: the default SQLite file in the data dir, without a schema.
    assert_one_line_error(bonescan(clean_env, "jobs", "list"), "bonescan db upgrade")


def test_the_real_bonescan_command_lists_jobs_as_json(pg_admin: Admin) -> None:
    seeded = pg_admin.db.study(JobState.EXPORTED)
    command = [sys.executable, "-m", "pipeline.cli"]
    listed = subprocess.run(
        [*command, "jobs", "list", "--json", "--no-phi"],
        env=pg_admin.env,
        capture_output=True,
        text=True,
        timeout=600,  # a generous deadline: the process start is slow on a loaded 2-core host
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == seeded.job_id
    assert "patient_name" not in row
    missing = subprocess.run(
        [*command, "jobs", "show", "999"],
        env=pg_admin.env,
        capture_output=True,
        text=True,
        timeout=600,  # a generous deadline: the process start is slow on a loaded 2-core host
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no job with id 999"
