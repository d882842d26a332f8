"""The segment task's body: claim the job, segment the scan, write SEG + SR, store the results.

Plain functions over a :class:`~pipeline.tasks.runtime.Runtime`, so they run the same under a
Celery worker, ``bonescan segment`` and tests; :mod:`pipeline.tasks.app` wraps them as tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom import Dataset
from sqlalchemy import select

from pipeline.db.jobs import (
    Claim,
    LeaseLostError,
    LesionRow,
    ResultObject,
    ViewRow,
    claim_job,
    fail_job,
    job_sources,
    lease_remaining,
    save_results,
)
from pipeline.db.models import Job, Series, Study
from pipeline.db.types import utcnow
from pipeline.dicom.files import read_source, write_atomic
from pipeline.dicom.seg import ViewMask, order_views
from pipeline.errors import PermanentError
from pipeline.tasks.metrics import WorkerMetrics
from pipeline.tasks.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOutcome:
    """What the task does next: send these exports (empty when nothing was written), or look
    again in ``recheck_in`` seconds when another worker holds the job (it may die)."""

    claim: Claim
    export_ids: list[int]
    seg_sop_instance_uid: str | None = None
    recheck_in: float | None = None


@dataclass(frozen=True)
class _JobInput:
    paths: list[Path]
    study_uid: str
    weights: Path | None
    generation: int
    model_version: str
    queued_at: datetime | None


def _load_input(rt: Runtime, job_id: int) -> tuple[Claim, _JobInput | None]:
    with rt.sessions.begin() as session:
        claim = claim_job(
            session,
            job_id,
            rt.owner,
            rt.settings.worker.lease_seconds,
            owner_dead=rt.owner_dead,
        )
        if claim is not Claim.CLAIMED:
            return claim, None
        job = session.get(Job, job_id)
        assert job is not None
        study_uid = session.scalar(
            select(Study.study_instance_uid)
            .join(Series, Series.study_id == Study.id)
            .where(Series.id == job.series_id)
        )
        sources = job_sources(session, job)
        queued = [e.at for e in job.events if e.to_state.value in ("queued", "received")]
        return claim, _JobInput(
            paths=[Path(instance.spool_path) for instance in sources],
            study_uid=str(study_uid),
            weights=rt.weights_for(job.weights_path),
            generation=job.generation,
            model_version=job.model_version,
            queued_at=max(queued) if queued else None,
        )


def read_sources(paths: list[Path]) -> list[Dataset]:
    """Read and decode the source instances; a decoding failure is permanent."""
    if not paths:
        raise PermanentError("the job has no source instances (were they purged?)")
    datasets: list[Dataset] = []
    for path in paths:
        dataset = read_source(path)
        try:
            dataset.pixel_array  # noqa: B018 - decode now: a codec error is the job's reason
        except Exception as error:  # pydicom raises several types for codec problems
            syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "?")
            raise PermanentError(
                f"cannot decode the pixel data of {path.name} (transfer syntax {syntax}): {error}"
            ) from None
        datasets.append(dataset)
    return datasets


def result_dir(rt: Runtime, study_uid: str, series_uid: str) -> Path:
    """Where a result series' files live: ``<data>/results/<study UID>/<series UID>/``."""
    return rt.settings.results_dir / study_uid / series_uid


def run_segment(rt: Runtime, job_id: int, metrics: WorkerMetrics) -> SegmentOutcome:
    """Run one job end to end up to ``segmented``; permanent errors fail the job.

    Transient errors (database, file system) propagate for the task to retry; the lease they
    leave behind expires and the retry takes the job over.
    """
    from pipeline.dicom.sr import ViewSummary, build_summary_sr  # noqa: PLC0415
    from pipeline.workflow.segment import segment_scan  # noqa: PLC0415

    claim, job_input = _load_input(rt, job_id)
    if job_input is None:
        logger.info("job_not_claimed job=%d claim=%s", job_id, claim.value)
        recheck = None
        if claim is Claim.HELD:
            with rt.sessions() as session:
                remaining = lease_remaining(session, job_id)
            recheck = None if remaining is None else remaining + 1.0
        return SegmentOutcome(claim, [], recheck_in=recheck)
    started = time.perf_counter()
    if job_input.queued_at:
        metrics.stage("queue_wait", (utcnow() - job_input.queued_at).total_seconds())
    try:
        sources = read_sources(job_input.paths)
        try:
            predictor = rt.predictor(job_input.weights)
        except ValueError as error:  # CheckpointError: missing, unreadable or wrong weights
            raise PermanentError(f"cannot load the model: {error}") from None
        if predictor.model_version != job_input.model_version:
            logger.warning(
                "model_version_differs job=%d opened_for=%s running=%s",
                job_id,
                job_input.model_version,
                predictor.model_version,
            )
        scan = segment_scan(sources, predictor, generation=job_input.generation)
    except PermanentError as error:
        with rt.sessions.begin() as session:
            fail_job(session, job_id, rt.owner, str(error))
        metrics.jobs.labels("failed").inc()
        logger.warning("job_failed job=%d reason=%s", job_id, error)
        return SegmentOutcome(claim, [])
    inference_done = utcnow()
    metrics.stage("inference", time.perf_counter() - started)
    seg = scan.seg
    # The SEG's frame order (anterior, then posterior): frame k of the SEG is ordered[k - 1].
    frames = order_views({view: ViewMask(r.image, r.mask) for view, r in scan.views.items()})
    ordered = [scan.views[frame.image.view] for frame in frames]
    summaries = [
        ViewSummary(
            view=result.image.view,
            seg_frame_number=index,
            source_sop_class_uid=result.image.sop_class_uid,
            source_sop_instance_uid=result.image.sop_instance_uid,
            source_frame_number=result.image.frame_number,
            lesion_areas_mm2=[lesion.area_mm2 for lesion in result.lesions],
        )
        for index, result in enumerate(ordered, start=1)
    ]
    sr = build_summary_sr(
        seg,
        sources,
        summaries,
        model_version=predictor.model_version,
        generation=job_input.generation,
    )
    written = time.perf_counter()
    directory = result_dir(rt, job_input.study_uid, seg.SeriesInstanceUID)
    seg_path = write_atomic(seg, directory / f"SEG_{seg.SOPInstanceUID}.dcm")
    sr_path = write_atomic(
        sr,
        result_dir(rt, job_input.study_uid, sr.SeriesInstanceUID) / f"SR_{sr.SOPInstanceUID}.dcm",
    )
    seg_written = utcnow()
    metrics.stage("seg_write", time.perf_counter() - written)
    views = [
        ViewRow(
            view=result.image.view.value,
            source_sop_instance_uid=result.image.sop_instance_uid,
            source_frame_number=result.image.frame_number,
            crop_top=result.crop_top,
            lesions=[
                LesionRow(
                    label=lesion.label,
                    area_px=lesion.area_px,
                    area_mm2=lesion.area_mm2,
                    centroid=(lesion.centroid_row, lesion.centroid_column),
                    bbox=(
                        lesion.bbox_row_min,
                        lesion.bbox_column_min,
                        lesion.bbox_row_max,
                        lesion.bbox_column_max,
                    ),
                    max_probability=lesion.max_probability,
                )
                for lesion in result.lesions
            ],
        )
        for result in ordered
    ]
    try:
        with rt.sessions.begin() as session:
            export_ids = save_results(
                session,
                job_id,
                rt.owner,
                views=views,
                seg=ResultObject(
                    seg.SOPClassUID, seg.SOPInstanceUID, seg.SeriesInstanceUID, str(seg_path)
                ),
                sr=ResultObject(
                    sr.SOPClassUID, sr.SOPInstanceUID, sr.SeriesInstanceUID, str(sr_path)
                ),
                destinations=[d.name for d in rt.settings.destinations],
                inference_done_at=inference_done,
                seg_written_at=seg_written,
            )
    except LeaseLostError as error:
        # Another worker took the job over (our lease expired): its result stands. The files
        # we wrote carry the same deterministic UIDs and content, so nothing is left dangling.
        logger.warning("lease_lost job=%d error=%s", job_id, error)
        return SegmentOutcome(Claim.HELD, [])
    metrics.jobs.labels("segmented").inc()
    logger.info(
        "job_segmented job=%d seg=%s lesions=%s exports=%d seconds=%.3f",
        job_id,
        seg.SOPInstanceUID,
        "/".join(f"{v.view}:{len(v.lesions)}" for v in views),
        len(export_ids),
        time.perf_counter() - started,
    )
    return SegmentOutcome(claim, export_ids, seg.SOPInstanceUID)
