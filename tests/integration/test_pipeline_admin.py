"""Admin commands against the running pipeline (listener, real worker, Orthanc, PostgreSQL +
Redis): ``jobs reprocess`` makes a new SEG series in PACS and marks the old result superseded;
``exports retry`` delivers a failed export once the destination is back."""

from __future__ import annotations

import subprocess
import sys

from pydicom import dcmread
from sqlalchemy import select

from pipeline.db.models import Export, Job, Result
from pipeline.db.states import ExportState, JobState
from tests.integration.conftest import REPO, RunningListener, wait_for
from tests.integration.pacs import OrthancPacs
from tests.integration.test_pipeline import job_in, write_scan
from tests.integration.test_pipeline_faults import Stack, _exported
from tests.integration.test_pipeline_faults import stack as stack  # noqa: PLC0414 - the fixture


def bonescan(listener: RunningListener, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**listener.env, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_reprocess_sends_a_new_seg_series_and_supersedes_the_old_result(
    stack: Stack, orthanc: OrthancPacs
) -> None:
    listener = stack.listener(orthanc.destination)
    stack.start_worker(listener.env)
    paths = write_scan(stack.tmp_path, 7)
    listener.storescu(*paths)
    first = _exported(listener)
    series_uid = dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID

    result = bonescan(listener, "jobs", "reprocess", "--series", series_uid)
    assert result.returncode == 0, result.stderr
    assert "reprocessing 1 series" in result.stdout

    def second_exported() -> Job | None:
        with listener.session() as session:
            return session.scalars(
                select(Job).where(Job.generation == 1, Job.state == JobState.EXPORTED)
            ).first()

    second = wait_for(second_exported, timeout=300, what="the reprocessed job", every=0.2)
    with listener.session() as session:
        old = list(session.scalars(select(Result).where(Result.job_id == first.id)))
        new = list(session.scalars(select(Result).where(Result.job_id == second.id)))
    assert len(old) == len(new) == 2  # one row per view
    assert all(r.superseded for r in old)
    assert not any(r.superseded for r in new)
    old_series = {r.seg_series_instance_uid for r in old}
    new_series = {r.seg_series_instance_uid for r in new}
    assert len(old_series) == len(new_series) == 1
    assert old_series != new_series
    assert orthanc.find_sop(new[0].seg_sop_instance_uid)
    assert orthanc.find_sop(old[0].seg_sop_instance_uid)  # the old one stays in PACS
    assert len(orthanc.instances()) == 4  # two SEG and two SR


def test_exports_retry_delivers_a_failed_export_once_the_destination_is_back(
    stack: Stack, orthanc: OrthancPacs
) -> None:
    listener = stack.listener(orthanc.destination, EXPORT__MAX_ATTEMPTS="1")
    stack.start_worker(listener.env)
    orthanc.stop()
    try:
        listener.storescu(*write_scan(stack.tmp_path, 8))
        job = wait_for(
            lambda: job_in(listener, JobState.EXPORT_FAILED),
            timeout=300,
            what="the exports to fail with the PACS down",
            every=0.2,
        )
    finally:
        orthanc.start()
    with listener.session() as session:
        failed = list(session.scalars(select(Export).where(Export.job_id == job.id)))
    assert {e.state for e in failed} == {ExportState.FAILED}
    assert orthanc.instances() == []

    result = bonescan(listener, "exports", "retry", "--all-failed")
    assert result.returncode == 0, result.stderr

    _exported(listener)
    with listener.session() as session:
        exports = list(session.scalars(select(Export).where(Export.job_id == job.id)))
    assert {e.state for e in exports} == {ExportState.DELIVERED}
    assert all(e.attempts == 1 for e in exports)  # retry resets the count (the audit keeps it)
    assert len(orthanc.instances()) == 2
