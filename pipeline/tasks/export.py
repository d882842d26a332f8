"""The export task's body: deliver one SEG or SR to one destination, exactly once.

Transient failures (peer down, timeout, 0xA7xx) come back with exponential backoff until
``export.max_attempts``; permanent ones (SOP class not accepted, rejected) fail at once with the
reason. After a successful C-STORE the instance is read back with C-FIND where the destination
supports it. Every attempt is counted on the export row and its outcome kept in ``last_error``.

Delivery is at-least-once on the wire and exactly once in effect: the row is claimed before
sending, so two messages never send it at once, and the object's UIDs are deterministic, so a
resend after a crash between C-STORE and commit stores the same instance again, which a PACS
treats as the same object.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from pipeline.db.jobs import (
    ExportClaim,
    claim_export,
    export_delivered,
    export_failed,
    export_retry_later,
    export_verified,
)
from pipeline.db.models import Export, Job, JobEvent
from pipeline.db.states import JobState
from pipeline.db.types import utcnow
from pipeline.errors import PermanentError, RetryableError
from pipeline.settings import Destination, Settings
from pipeline.tasks.metrics import WorkerMetrics
from pipeline.tasks.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOutcome:
    """``retry_in``: seconds until the next attempt should be sent, when one is due."""

    state: str
    retry_in: float | None = None
    detail: str = ""


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Delay before attempt ``attempt + 1``: base × 2^(attempt − 1), capped."""
    base = settings.export.backoff_base_seconds
    return float(min(settings.export.backoff_max_seconds, base * 2 ** max(0, attempt - 1)))


def _end_to_end(rt: Runtime, job_id: int, metrics: WorkerMetrics) -> None:
    with rt.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.EXPORTED:
            return
        first: JobEvent | None = job.events[0] if job.events else None
        if first is not None:
            metrics.stage("end_to_end", (utcnow() - first.at).total_seconds())


@dataclass(frozen=True)
class _Claimed:
    claim: ExportClaim
    destination: str = ""
    path: Path = Path()
    attempt: int = 0
    job_id: int = 0
    busy_for: float = 0.0  # a busy export: seconds until its sender's claim is stale


def _claim(rt: Runtime, export_id: int) -> _Claimed:
    lease = rt.settings.worker.lease_seconds
    with rt.sessions.begin() as session:
        claim = claim_export(session, export_id, lease)
        export = session.get(Export, export_id)
        if export is None:
            return _Claimed(claim)
        if claim is ExportClaim.BUSY:
            left = lease - (utcnow() - export.updated_at).total_seconds()
            return _Claimed(claim, busy_for=max(0.0, left))
        if claim is not ExportClaim.CLAIMED:
            return _Claimed(claim)
        return _Claimed(
            claim, export.destination, Path(export.path), export.attempts, export.job_id
        )


def _transient(
    rt: Runtime,
    export_id: int,
    name: str,
    *,
    attempt: int,
    error: Exception,
    metrics: WorkerMetrics,
) -> ExportOutcome:
    reason = f"attempt {attempt}: {error}"
    if attempt >= rt.settings.export.max_attempts:
        return _permanent(
            rt, export_id, name, f"gave up after {attempt} attempts: {error}", metrics
        )
    delay = backoff_seconds(rt.settings, attempt)
    with rt.sessions.begin() as session:
        export_retry_later(session, export_id, reason, delay)
    metrics.exports.labels("retry").inc()
    logger.info(
        "export_retry export=%d destination=%s in=%.1fs reason=%s", export_id, name, delay, reason
    )
    return ExportOutcome("pending", retry_in=delay, detail=reason)


def _permanent(
    rt: Runtime, export_id: int, name: str, reason: str, metrics: WorkerMetrics
) -> ExportOutcome:
    with rt.sessions.begin() as session:
        export_failed(session, export_id, reason)
    metrics.exports.labels("failed").inc()
    logger.warning("export_failed export=%d destination=%s reason=%s", export_id, name, reason)
    return ExportOutcome("failed", detail=reason)


def _verify(
    rt: Runtime, export_id: int, destination: Destination, path: Path, metrics: WorkerMetrics
) -> str:
    from pipeline.dicom.scu import verify_stored  # noqa: PLC0415

    started = time.perf_counter()
    try:
        header = dcmread(path, stop_before_pixels=True)
        found = verify_stored(
            destination,
            study_uid=header.StudyInstanceUID,
            series_uid=header.SeriesInstanceUID,
            sop_instance_uid=header.SOPInstanceUID,
            calling_ae_title=rt.settings.listener.ae_title,
            timeout_s=rt.settings.export.timeout_seconds,
        )
    except (RetryableError, OSError) as error:
        # Delivered is delivered; a read-back that cannot run now is only logged.
        logger.warning("export_verify_unavailable export=%d error=%s", export_id, error)
        return "read-back unavailable"
    if found is not None:
        metrics.stage("verify", time.perf_counter() - started)
    with rt.sessions.begin() as session:
        export_verified(session, export_id, found)
    if found is False:
        logger.warning(
            "export_not_found_on_read_back export=%d destination=%s", export_id, destination.name
        )
    return {True: "verified", False: "not found on read-back", None: "not verifiable"}[found]


def run_export(rt: Runtime, export_id: int, metrics: WorkerMetrics) -> ExportOutcome:
    """One delivery attempt of export ``export_id``."""
    from pipeline.dicom.scu import store  # noqa: PLC0415

    claimed = _claim(rt, export_id)
    if claimed.claim is not ExportClaim.CLAIMED:
        logger.info("export_not_claimed export=%d claim=%s", export_id, claimed.claim.value)
        if claimed.claim is ExportClaim.BUSY:  # look again once the sender's claim is stale
            return ExportOutcome(claimed.claim.value, retry_in=claimed.busy_for + 1.0)
        return ExportOutcome(claimed.claim.value)
    name, path, attempt = claimed.destination, claimed.path, claimed.attempt
    try:
        destination = rt.settings.destination(name)
    except KeyError:
        return _permanent(
            rt, export_id, name, f"destination {name!r} is no longer configured", metrics
        )
    started = time.perf_counter()
    try:
        result = store(
            destination,
            path,
            calling_ae_title=rt.settings.listener.ae_title,
            timeout_s=rt.settings.export.timeout_seconds,
        )
    except RetryableError as error:
        return _transient(rt, export_id, name, attempt=attempt, error=error, metrics=metrics)
    except PermanentError as error:
        return _permanent(rt, export_id, name, str(error), metrics)
    metrics.stage("export_send", time.perf_counter() - started)
    metrics.exports.labels("delivered").inc()
    with rt.sessions.begin() as session:
        export_delivered(session, export_id, result.detail)
    logger.info("export_delivered export=%d destination=%s attempt=%d", export_id, name, attempt)
    detail = _verify(rt, export_id, destination, path, metrics) if destination.verify else ""
    _end_to_end(rt, claimed.job_id, metrics)
    return ExportOutcome("delivered", detail=detail)
