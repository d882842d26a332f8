"""The product's main job, end to end with real peers: dcmtk storescu → listener process →
Redis → ``bonescan worker`` process (Celery prefork) → Orthanc, over PostgreSQL.

Each test reads the SEG back from Orthanc and checks, per source frame, that the mask is the one
the model gives on that view (recomputed here with the same weights), so a SEG that lands on the
wrong frame, or mirrored, fails.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless
from sqlalchemy import func, select

from msanet_core import Segmenter, generate_patient
from pipeline.db.models import Export, Job, JobEvent, Result
from pipeline.db.states import ExportState, JobState
from pipeline.dicom.nm import ScanIdentity, build_whole_body, save
from pipeline.dicom.views import split_views
from pipeline.workflow.segment import segment_scan
from tests.integration.conftest import RunningListener, StartListener, StartWorker, wait_for
from tests.integration.pacs import OrthancPacs

DCIODVFY = "/usr/bin/dciodvfy"


def write_scan(
    directory: Path,
    index: int,
    *,
    seed: int = 11,
    single_frame: bool = False,
    head_first: bool = True,
    compress: bool = False,
) -> list[Path]:
    """A synthetic patient's scan as NM files (one 2-frame instance or two views)."""
    patient = generate_patient(seed, index)
    who = ScanIdentity.synthetic(seed, index, patient.patient_id)
    datasets = build_whole_body(
        patient.anterior.counts,
        patient.posterior.counts,
        who,
        head_first=head_first,
        single_frame=single_frame,
    )
    paths = []
    for number, dataset in enumerate(datasets, start=1):
        path = directory / f"{patient.patient_id}_{number}.dcm"
        save(dataset, path)
        if compress:
            written = dcmread(path)
            written.compress(RLELossless)
            written.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def pipeline_settings(
    redis_url: str, destination: dict[str, object], weights: Path, **extra: str
) -> dict[str, str]:
    return {
        "BROKER_URL": redis_url,
        "DESTINATIONS": json.dumps([destination]),
        "WEIGHTS": str(weights),
        "WORKER__LEASE_SECONDS": "15",
        "EXPORT__BACKOFF_BASE_SECONDS": "0.5",
        "EXPORT__BACKOFF_MAX_SECONDS": "2",
        **extra,
    }


def destination_of(pacs: OrthancPacs) -> dict[str, object]:
    return pacs.destination.model_dump()


def job_in(listener: RunningListener, *states: JobState) -> Job | None:
    with listener.session() as session:
        return session.scalars(select(Job).where(Job.state.in_(states)).order_by(Job.id)).first()


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def expected_masks(paths: list[Path], weights: Path) -> dict[tuple[str, int | None], np.ndarray]:
    """(source UID, frame) → the full-frame mask the model gives on that view."""
    sources = [dcmread(path) for path in paths]
    result = segment_scan(sources, Segmenter.load(weights, device="cpu"))
    return {
        (view.image.sop_instance_uid, view.image.frame_number): view.mask
        for view in result.views.values()
    }


def check_seg_in_pacs(
    pacs: OrthancPacs, seg_uid: str, paths: list[Path], *, weights: Path, tmp_path: Path
) -> None:
    """The SEG from Orthanc: valid, and each view's mask on its own source frame."""
    seg_path = tmp_path / "from-orthanc-seg.dcm"
    seg_path.write_bytes(pacs.download(seg_uid))
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    expected = expected_masks(paths, weights)
    views = split_views([dcmread(path) for path in paths])
    assert len(expected) == 2
    for (uid, frame), mask in expected.items():
        if frame is None:  # a single-frame view: referenced by instance, no frame number
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid],
                segment_numbers=[1],
                assert_missing_frames_are_empty=False,
            )
        else:
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=uid,
                source_frame_numbers=[frame],
                segment_numbers=[1],
                assert_missing_frames_are_empty=False,
            )
        assert pixels.shape[1:3] == mask.shape
        np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
    # and the two views differ (a model output copied to both frames would pass the loop)
    a, b = expected.values()
    assert views
    assert not np.array_equal(a, b)


def run_scan(
    listener: RunningListener,
    pacs: OrthancPacs,
    paths: list[Path],
    *,
    timeout: float = 600,
    extra: tuple[str, ...] = (),
) -> Job:
    listener.storescu(*paths, extra=extra)
    return wait_for(
        lambda: job_in(listener, JobState.EXPORTED, JobState.FAILED, JobState.EXPORT_FAILED),
        timeout=timeout,
        what="the job to be exported",
        every=0.2,
    )


@pytest.fixture
def pipeline(  # noqa: PLR0917 - fixtures are positional by nature
    start_listener: StartListener,
    start_worker: StartWorker,
    orthanc: OrthancPacs,
    postgres_url: str,
    redis_url: str,
    tiny_weights: Path,
) -> tuple[RunningListener, OrthancPacs]:
    settings = pipeline_settings(redis_url, destination_of(orthanc), tiny_weights)
    listener = start_listener(database_url=postgres_url, **settings)
    start_worker(listener.env)
    return listener, orthanc


def test_scan_becomes_one_seg_and_one_sr_in_orthanc(
    pipeline: tuple[RunningListener, OrthancPacs], tiny_weights: Path, tmp_path: Path
) -> None:
    listener, pacs = pipeline
    paths = write_scan(tmp_path, 0)
    job = run_scan(listener, pacs, paths)
    assert job.state == JobState.EXPORTED, job.error

    def verified() -> bool:  # the read-back follows the delivery that made the job exported
        with listener.session() as session:
            stamps = list(session.scalars(select(Export.verified_at)))
        return len(stamps) == 2 and all(stamps)

    wait_for(verified, timeout=120, what="the C-FIND read-backs", every=0.2)
    with listener.session() as session:
        results = list(session.scalars(select(Result).where(Result.job_id == job.id)))
        exports = list(session.scalars(select(Export).where(Export.job_id == job.id)))
        stages = set(session.scalars(select(JobEvent.stage).where(JobEvent.job_id == job.id)))
    assert sorted(r.view for r in results) == ["anterior", "posterior"]
    assert len({r.seg_sop_instance_uid for r in results}) == 1
    assert {e.state for e in exports} == {ExportState.DELIVERED}
    assert len(exports) == 2  # SEG and SR
    assert all(e.attempts == 1 and e.verified_at is not None for e in exports)
    assert {
        "received",
        "complete",
        "queued",
        "started",
        "inference_done",
        "seg_written",
        "sent",
        "verified",
    } <= stages
    source = dcmread(paths[0], stop_before_pixels=True)
    in_pacs = pacs.instances()
    modalities = sorted(i["MainDicomTags"].get("SOPClassUID", "") for i in in_pacs)
    assert len(in_pacs) == 2, modalities
    seg_uid = results[0].seg_sop_instance_uid
    sr_uid = results[0].sr_sop_instance_uid
    assert sr_uid is not None
    assert pacs.find_sop(seg_uid)
    assert pacs.find_sop(sr_uid)
    for uid in (seg_uid, sr_uid):
        stored = dcmread(io.BytesIO(pacs.download(uid)), stop_before_pixels=True)
        assert stored.StudyInstanceUID == source.StudyInstanceUID
    sr_path = tmp_path / "from-orthanc-sr.dcm"
    sr_path.write_bytes(pacs.download(sr_uid))
    assert dciodvfy_errors(sr_path) == []
    check_seg_in_pacs(pacs, seg_uid, paths, weights=tiny_weights, tmp_path=tmp_path)


def test_the_same_scan_twice_runs_once_and_makes_one_seg(
    pipeline: tuple[RunningListener, OrthancPacs], tmp_path: Path
) -> None:
    listener, pacs = pipeline
    paths = write_scan(tmp_path, 1)
    first = run_scan(listener, pacs, paths)
    assert first.state == JobState.EXPORTED, first.error
    listener.storescu(*paths)  # the modality sends it again
    listener.storescu(*paths)
    with listener.session() as session:
        assert session.scalar(select(func.count(Job.id))) == 1
        assert session.scalar(select(func.count(Result.id))) == 2
    assert len(pacs.instances()) == 2


@pytest.mark.parametrize(
    "variant",
    [
        {"single_frame": True, "head_first": True, "compress": False},
        {"single_frame": False, "head_first": False, "compress": False},
        {"single_frame": False, "head_first": True, "compress": True},
    ],
    ids=["single-frame-pair", "feet-first", "rle-compressed"],
)
def test_scan_variants_land_on_their_views(
    pipeline: tuple[RunningListener, OrthancPacs],
    tiny_weights: Path,
    tmp_path: Path,
    variant: dict[str, bool],
) -> None:
    listener, pacs = pipeline
    paths = write_scan(tmp_path, 2, **variant)
    # storescu proposes uncompressed syntaxes only unless told: -xr proposes RLE Lossless too
    job = run_scan(listener, pacs, paths, extra=("-xr",) if variant["compress"] else ())
    assert job.state == JobState.EXPORTED, job.error
    with listener.session() as session:
        seg_uid = session.scalars(select(Result.seg_sop_instance_uid)).first()
    assert seg_uid is not None
    check_seg_in_pacs(pacs, seg_uid, paths, weights=tiny_weights, tmp_path=tmp_path)
