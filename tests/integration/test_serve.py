"""``bonescan serve`` end to end: dcmtk's storescu → serve (listener + real Celery worker) → SEG
and SR in Orthanc; on embedded defaults (SQLite, the SQLite broker, no Redis) and on Redis +
PostgreSQL. Ctrl-C stops every child cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.db.migrate import head_revision, upgrade
from pipeline.db.models import Export, Result
from pipeline.db.states import ExportState, JobState
from tests.conftest import free_port
from tests.integration.conftest import AE_TITLE, REPO, RunningListener, port_open, wait_for
from tests.integration.pacs import OrthancPacs
from tests.integration.test_pipeline import job_in, write_scan

StartServe = Callable[..., RunningListener]


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def start_serve(
    clean_env: dict[str, str], tmp_path: Path, orthanc: OrthancPacs, tiny_weights: Path
) -> Iterator[StartServe]:
    """Start ``bonescan serve`` with Orthanc as the destination; settings as keywords."""
    started: list[RunningListener] = []

    def start(**settings: str) -> RunningListener:
        data = tmp_path / "data"
        port = free_port()
        env = {
            **clean_env,
            "BONESCAN_DATA_DIR": str(data),
            "BONESCAN_LISTENER__PORT": str(port),
            "BONESCAN_LISTENER__AE_TITLE": AE_TITLE,
            "BONESCAN_LOG_FORMAT": "text",
            "BONESCAN_WEIGHTS": str(tiny_weights),
            "BONESCAN_DESTINATIONS": json.dumps([orthanc.destination.model_dump()]),
            "PYTHONPATH": str(REPO),
        }
        env.update({f"BONESCAN_{key}": value for key, value in settings.items()})
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "serve", "--concurrency", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = settings.get("DATABASE_URL", f"sqlite:///{data / 'bonescan.db'}")
        running = RunningListener(process, port, data, url, env, log_path)
        started.append(running)
        wait_for(
            lambda: (" ready." in running.log() and port_open(port)) or not running.alive(),
            timeout=240,  # a deadline for busy CI hosts, not a measurement
            what="serve's listener and worker",
            every=0.2,
        )
        if not running.alive():
            pytest.fail(f"serve exited {process.returncode}:\n{running.log()}")
        return running

    yield start
    for running in started:
        running.stop(signal.SIGKILL)


def _delivered_to_orthanc(serve: RunningListener, orthanc: OrthancPacs, tmp_path: Path) -> None:
    paths = write_scan(tmp_path, 5)
    serve.storescu(*paths)
    job = wait_for(
        lambda: job_in(serve, JobState.EXPORTED, JobState.FAILED, JobState.EXPORT_FAILED),
        timeout=300,
        what="the job to be exported",
        every=0.2,
    )
    assert job is not None
    assert job.state == JobState.EXPORTED, job.error
    with serve.session() as session:
        seg_uid = session.scalars(select(Result.seg_sop_instance_uid)).first()
        exports = list(session.scalars(select(Export)))
    assert seg_uid is not None
    assert {export.state for export in exports} == {ExportState.DELIVERED}
    assert orthanc.find_sop(seg_uid)
    assert len(orthanc.instances()) == 2  # SEG and SR


def _stops_cleanly_on_ctrl_c(serve: RunningListener) -> None:
    children = _children(serve.process.pid)
    assert len(children) == 2  # the listener and the worker's main process
    serve.process.send_signal(signal.SIGINT)
    assert serve.process.wait(timeout=120) == 0
    log = serve.log()
    assert "serve_stopped child=listener code=0" in log
    assert "serve_stopped child=worker code=0" in log
    assert "bonescan serve: stopped" in log
    assert [pid for pid in children if _alive(pid)] == []


def test_serve_on_embedded_defaults_delivers_seg_to_orthanc(
    start_serve: StartServe, orthanc: OrthancPacs, tmp_path: Path
) -> None:
    serve = start_serve()  # no BROKER_URL, no DATABASE_URL: SQLite and the SQLite broker
    assert "(embedded)" in serve.log()
    assert (serve.data_dir / "broker.sqlite").is_file()
    _delivered_to_orthanc(serve, orthanc, tmp_path)
    _stops_cleanly_on_ctrl_c(serve)


def test_serve_on_redis_and_postgresql_delivers_seg_to_orthanc(
    start_serve: StartServe,
    orthanc: OrthancPacs,
    tmp_path: Path,
    redis_url: str,
    postgres_url: str,
) -> None:
    upgrade(postgres_url)  # production: the admin migrates; serve checks the revision
    serve = start_serve(BROKER_URL=redis_url, DATABASE_URL=postgres_url)
    assert "(embedded)" not in serve.log()
    assert not (serve.data_dir / "broker.sqlite").exists()
    _delivered_to_orthanc(serve, orthanc, tmp_path)
    _stops_cleanly_on_ctrl_c(serve)


def test_serve_refuses_a_postgresql_database_not_at_head(
    clean_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve"],
        env={**clean_env, "BONESCAN_DATABASE_URL": postgres_url, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the database schema is at nothing, this bonescan needs {head_revision()}: "
        "run `bonescan db upgrade`"
    ]
