"""The listener with two association processes (``listener.processes`` = 2): the same filing,
one set of metrics, a dead process replaced and its slots freed, kill -9 of the listener.
(SIGTERM: test_listener_faults.py, and the association limit: test_listener_protocol.py, each
with 1 and 2 processes.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pipeline.db.states import JobState
from tests.conftest import free_port
from tests.integration import dicom_factory as factory
from tests.integration.conftest import (
    AE_TITLE,
    RunningListener,
    StartListener,
    wait_for,
)
from tests.integration.test_listener_faults import (
    _send_in_background,
    _send_in_parallel,
    _series,
)
from tests.integration.test_listener_store import queued_tasks

pytestmark = pytest.mark.timeout(180)
TWO = {"LISTENER__PROCESSES": "2"}


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        lines = page.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line[0] != "#")}


def _process_pids(listener: RunningListener) -> dict[int, int]:
    """Association process index → pid, from the listener's log (the latest of each)."""
    found = re.findall(r"association_process_ready index=(\d+) pid=(\d+)", listener.log())
    return {int(index): int(pid) for index, pid in found}


def _scans(tmp_path: Path, count: int) -> list[Path]:
    return [
        factory.save(factory.nm_whole_body(seed=i), tmp_path / "scans" / f"{i:02d}.dcm")
        for i in range(count)
    ]


def test_two_processes_file_every_scan_enqueue_its_job_and_count_it_once(
    start_listener: StartListener, tmp_path: Path, redis_url: str
) -> None:
    metrics_port = free_port()
    listener = start_listener(BROKER_URL=redis_url, LISTENER__METRICS_PORT=str(metrics_port), **TWO)
    assert sorted(_process_pids(listener)) == [0, 1]
    files = _scans(tmp_path, 8)
    _send_in_parallel(listener.port, files, associations=4, timeout=120)

    rows = listener.instances()
    assert len(rows) == len(files)
    assert {Path(row.spool_path).exists() for row in rows} == {True}
    jobs = wait_for(
        lambda: (
            jobs
            if len(jobs := listener.jobs()) == 8 and all(j.state == JobState.QUEUED for j in jobs)
            else None
        ),
        timeout=30,
        what="eight jobs queued through the parent's sender",
    )
    assert sorted(kwargs["job_id"] for _, kwargs in queued_tasks(redis_url)) == sorted(
        j.id for j in jobs
    )
    metrics = wait_for(  # relayed from both processes twice a second
        lambda: (
            m
            if (m := _metrics(metrics_port)).get(
                'bonescan_listener_instances_received_total{result="stored"}'
            )
            == 8
            else None
        ),
        timeout=10,
        what="the parent's metrics to count every instance",
    )
    assert metrics['bonescan_listener_associations_total{outcome="accepted",reason=""}'] == 4
    assert metrics["bonescan_listener_store_handler_seconds_count"] == 8
    assert metrics["bonescan_listener_received_bytes_total"] == sum(r.size_bytes for r in rows)
    assert metrics['bonescan_listener_jobs_total{event="opened"}'] == 8
    assert "Test^Patient" not in listener.log()


def test_a_killed_association_process_is_replaced_and_its_slots_freed(
    start_listener: StartListener, tmp_path: Path
) -> None:
    listener = start_listener(LISTENER__MAX_ASSOCIATIONS="2", **TWO)
    files = _series(tmp_path, 30)
    sender = _send_in_background(listener.port, files)
    wait_for(lambda: len(listener.instances()) >= 2, timeout=30, what="a couple of instances")
    before = _process_pids(listener)
    for pid in before.values():  # the one serving the association, and the other
        os.kill(pid, signal.SIGKILL)
    sender.communicate(timeout=60)
    assert sender.returncode != 0  # its association died with the process

    wait_for(
        lambda: (
            len(after := _process_pids(listener)) == 2
            and set(after.values()).isdisjoint(before.values())
        ),
        timeout=60,
        what="both association processes started again",
    )
    assert "association_process_exited index=0" in listener.log()
    assert listener.alive()
    # the dead processes' slots are free again: two associations at once fit the limit of 2
    ae = AE(ae_title="PROTO")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE) for _ in range(2)]
    assert all(a.is_established for a in held), listener.log()[-2000:]
    for association in held:
        association.release()
    assert list(listener.spool.rglob("*.part")) == []  # the dead processes' partial files
    listener.storescu(*files)  # the resend completes the series
    assert len(listener.instances()) == len(files)


def test_kill_9_of_the_listener_stops_its_processes_and_frees_the_port(
    start_listener: StartListener, tmp_path: Path
) -> None:
    files = _series(tmp_path, 40)
    listener = start_listener(**TWO)
    pids = _process_pids(listener)
    sender = _send_in_background(listener.port, files)
    wait_for(lambda: len(listener.instances()) >= 3, timeout=30, what="a few instances")
    listener.process.send_signal(signal.SIGKILL)
    listener.process.wait(timeout=10)
    sender.communicate(timeout=60)  # aborted by the orphaned process, unless it was done
    wait_for(
        lambda: not any(_alive(pid) for pid in pids.values()),
        timeout=30,
        what="the orphaned association processes to stop",
    )

    restarted = start_listener(port=listener.port, migrate=False, **TWO)
    restarted.storescu(*files)
    rows = restarted.instances()
    assert len(rows) == len(files)
    assert list(restarted.spool.rglob("*.part")) == []
    for row in rows:
        assert Path(row.spool_path).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout.strip()
    return not status.startswith("Z")  # a zombie has stopped
