"""Faults: a broken disk or database answers 0xA700 with nothing half-written; a broker outage
delays the job but loses nothing; kill -9 and SIGTERM in the middle of an association."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pipeline.db.models import Job
from pipeline.db.states import JobState
from tests.conftest import free_port
from tests.integration import dicom_factory as factory
from tests.integration.conftest import StartListener, wait_for
from tests.integration.test_listener_store import queued_tasks

pytestmark = pytest.mark.timeout(180)
OUT_OF_RESOURCES = "Refused: OutOfResources"  # storescu -v for status 0xA700


def _immutable(folder: Path, on: bool) -> bool:
    """chattr +i: even root cannot create entries in ``folder`` (chmod does not stop root)."""
    if shutil.which("chattr") is None:
        return False
    flag = "+i" if on else "-i"
    return (
        subprocess.run(["chattr", flag, str(folder)], capture_output=True, check=False).returncode
        == 0
    )


@pytest.fixture
def unwritable() -> Iterator[list[Path]]:
    folders: list[Path] = []
    yield folders
    for folder in folders:
        _immutable(folder, False)


def test_store_answers_out_of_resources_when_spool_is_unwritable(
    start_listener: StartListener, tmp_path: Path, unwritable: list[Path]
) -> None:
    listener = start_listener()
    if _immutable(listener.spool, True):
        unwritable.append(listener.spool)
    else:  # no chattr here: a file where the spool folder was breaks every write just the same
        listener.spool.rmdir()
        listener.spool.write_bytes(b"")
    result = listener.storescu(
        factory.save(factory.nm_whole_body(), tmp_path / "s.dcm"), check=False
    )
    assert OUT_OF_RESOURCES in result.stdout + result.stderr
    assert listener.instances() == []
    assert list(tmp_path.joinpath("data").rglob("*.dcm*")) == []
    assert list(tmp_path.joinpath("data").rglob("*.part")) == []
    assert listener.alive()


def test_store_answers_out_of_resources_when_database_is_unreachable(
    start_listener: StartListener, tmp_path: Path
) -> None:
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/bonescan"
    listener = start_listener(database_url=nowhere, migrate=False)
    result = listener.storescu(
        factory.save(factory.nm_whole_body(), tmp_path / "s.dcm"), check=False
    )
    assert OUT_OF_RESOURCES in result.stdout + result.stderr
    assert listener.spool_files() == []
    assert listener.alive()


def test_broker_outage_leaves_job_received_then_it_is_enqueued(
    start_listener: StartListener, tmp_path: Path
) -> None:
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    listener = start_listener(BROKER_URL=broker)
    listener.storescu(factory.save(factory.nm_whole_body(), tmp_path / "s.dcm"))
    assert len(listener.instances()) == 1
    [job] = wait_for(listener.jobs, timeout=10, what="the job to be opened")
    assert job.state == JobState.RECEIVED
    wait_for(lambda: "broker_unreachable" in listener.log(), timeout=10, what="a failed send")
    redis_server = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: [j for j in listener.jobs() if j.state == JobState.QUEUED],
            timeout=20,
            what="the job to be enqueued once the broker is back",
        )
        assert queued_tasks(broker) == [("bonescan.segment_series", {"job_id": job.id})]
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=10)


def _series(tmp_path: Path, count: int) -> list[Path]:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    return [
        factory.save(
            factory.nm_whole_body(study_uid=study, series_uid=series, seed=i),
            tmp_path / "out" / f"{i:03d}.dcm",
        )
        for i in range(count)
    ]


def _send_in_background(port: int, files: list[Path]) -> subprocess.Popen[str]:
    """dcmtk storescu sending ``files`` over one association, still running on return."""
    return subprocess.Popen(
        ["/usr/bin/storescu", "-aec", "BONESCAN", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _send_in_parallel(port: int, files: list[Path], associations: int, timeout: float) -> None:
    """``files`` over ``associations`` storescu associations at once; each must succeed."""
    senders = [_send_in_background(port, files[i::associations]) for i in range(associations)]
    for sender in senders:
        output, _ = sender.communicate(timeout=timeout)
        assert sender.returncode == 0, output


def _spool_is_consistent(listener_spool: Path, recorded: set[str]) -> None:
    partials = list(listener_spool.rglob("*.part"))
    assert partials == [], partials
    for path in listener_spool.rglob("*.dcm"):
        assert str(path) in recorded, f"{path} has no instance row"
        pydicom.dcmread(path)  # complete and readable


def test_kill_9_mid_association_leaves_no_partial_file_and_resend_succeeds(
    start_listener: StartListener, tmp_path: Path
) -> None:
    files = _series(tmp_path, 40)
    listener = start_listener()
    sender = _send_in_background(listener.port, files)
    wait_for(lambda: len(listener.instances()) >= 3, timeout=30, what="a few instances")
    listener.process.send_signal(signal.SIGKILL)
    listener.process.wait(timeout=10)
    sender.wait(timeout=30)
    assert sender.returncode != 0  # the association died under it
    assert len(listener.instances()) < len(files)

    restarted = start_listener(port=listener.port, migrate=False)
    wait_for(
        lambda: not list(restarted.spool.rglob("*.part")),
        timeout=10,
        what="partial files to be cleared",
    )
    restarted.storescu(*files)
    rows = restarted.instances()
    assert len(rows) == len(files)
    _spool_is_consistent(restarted.spool, {row.spool_path for row in rows})


@pytest.mark.parametrize("processes", ["1", "2"])  # 2: listeners/workers.py
def test_sigterm_mid_association_lets_it_complete(
    start_listener: StartListener, tmp_path: Path, processes: str
) -> None:
    files = _series(tmp_path, 30)
    listener = start_listener(LISTENER__PROCESSES=processes)
    sender = _send_in_background(listener.port, files)
    wait_for(lambda: len(listener.instances()) >= 2, timeout=30, what="a couple of instances")
    listener.process.send_signal(signal.SIGTERM)
    output, _ = sender.communicate(timeout=60)
    assert sender.returncode == 0, output
    assert listener.process.wait(timeout=30) == 0
    assert len(listener.instances()) == len(files)


def test_spooled_file_whose_row_was_lost_is_filed_after_a_restart(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """A power cut after the fsynced rename but before the commit leaves a spool file without its
    row: the restarted listener's recovery files it (and opens its job)."""
    from sqlalchemy import delete

    from pipeline.db.models import Instance, Job, JobEvent

    listener = start_listener()
    listener.storescu(factory.save(factory.nm_whole_body(), tmp_path / "scan.dcm"))
    wait_for(lambda: len(listener.jobs()) == 1, timeout=30, what="the job of the scan")
    assert listener.stop() == 0
    with listener.session() as session:  # the commit that the power cut lost
        session.execute(delete(JobEvent))
        session.execute(delete(Job))
        session.execute(delete(Instance))
        session.commit()
    listener.stop()  # disposes the test's engine

    again = start_listener(
        data_dir=listener.data_dir, database_url=listener.database_url, migrate=False
    )
    wait_for(lambda: len(again.instances()) == 1, timeout=60, what="the orphan filed")
    wait_for(lambda: len(again.jobs()) == 1, timeout=60, what="its job opened")
    assert "spool_orphans_recovered count=1" in again.log()
    assert again.instances()[0].spool_path == str(listener.spool_files()[0])


def test_sender_process_killed_loses_no_job_and_is_started_again(
    start_listener: StartListener, tmp_path: Path, redis_url: str
) -> None:
    """The child that sends the tasks of opened jobs dies: the next scan's job is enqueued by
    the sweeper instead, and the child is started again."""
    import os
    import re

    listener = start_listener(BROKER_URL=redis_url)
    listener.storescu(factory.save(factory.nm_whole_body(seed=1), tmp_path / "a.dcm"))
    wait_for(
        lambda: [j for j in listener.jobs() if j.state == JobState.QUEUED],
        timeout=20,
        what="the first job queued through the sender",
    )
    [pid] = map(int, re.findall(r"sender_started pid=(\d+)", listener.log()))
    os.kill(pid, signal.SIGKILL)

    listener.storescu(factory.save(factory.nm_whole_body(seed=2), tmp_path / "b.dcm"))

    def all_queued() -> list[Job] | None:
        jobs = listener.jobs()
        return jobs if len(jobs) == 2 and all(j.state == JobState.QUEUED for j in jobs) else None

    jobs = wait_for(all_queued, timeout=30, what="both jobs queued")
    assert {kwargs["job_id"] for _, kwargs in queued_tasks(redis_url)} == {j.id for j in jobs}
    wait_for(
        lambda: len(re.findall(r"sender_started pid=\d+", listener.log())) == 2,
        timeout=30,
        what="the sender started again",
    )
    assert listener.alive()
