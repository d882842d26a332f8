"""When is a series' scan complete, so that a job can start? (DESIGN.md "Start as soon as the
content is there".)

- a 2-frame whole-body instance is complete on arrival;
- two single-frame views (anterior and posterior, from ViewCodeSequence) are complete when both
  are in;
- anything else (one view, views without a view code) opens a job once the series has been
  quiet for ``quiet_seconds``: the fallback, not the main trigger.

The rules are pure (:func:`complete_on_arrival`, :func:`complete_series`); :class:`SeriesJobs`
applies them to the database. Concurrent openers are harmless: the job's idempotency key is
UNIQUE, so the second insert fails and nothing is opened twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from listeners.classify import view_of
from pipeline.db import ingest
from pipeline.db.models import Instance, Job, Series

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A bone-scan instance of a series, as far as completeness cares."""

    sop_instance_uid: str
    number_of_frames: int | None
    view: str | None


def complete_on_arrival(arrived: Candidate, others: Sequence[Candidate]) -> tuple[str, ...] | None:
    """The SOP Instance UIDs that ``arrived`` completes, or None if the scan is not complete."""
    if arrived.number_of_frames == 2:
        return (arrived.sop_instance_uid,)
    if arrived.number_of_frames == 1 and arrived.view is not None:
        for other in reversed(others):
            if other.number_of_frames == 1 and other.view not in (None, arrived.view):
                return tuple(sorted((arrived.sop_instance_uid, other.sop_instance_uid)))
    return None


def complete_series(candidates: Sequence[Candidate]) -> tuple[str, ...] | None:
    """The first complete scan among ``candidates`` (order of arrival), or None."""
    for index, candidate in enumerate(candidates):
        found = complete_on_arrival(candidate, candidates[:index])
        if found is not None:
            return found
    return None


def read_view(path: str) -> str | None:
    """The view of a spooled single-frame instance, from its header only."""
    try:
        header = dcmread(Path(path), stop_before_pixels=True)
        return view_of(header)
    except (OSError, InvalidDicomError, ValueError, AttributeError) as error:
        logger.warning("view_unreadable path=%s error=%s", path, error)
        return None


class SeriesJobs:
    """Opens jobs for complete series in a caller's transaction."""

    def __init__(
        self, model_version: str, view_reader: Callable[[str], str | None] = read_view
    ) -> None:
        self.model_version = model_version
        self._read_view = view_reader

    def _candidate(self, instance: Instance, known_view: str | None = None) -> Candidate:
        view = known_view
        if view is None and instance.number_of_frames == 1:
            view = self._read_view(instance.spool_path)
        return Candidate(instance.sop_instance_uid, instance.number_of_frames, view)

    def _open(
        self, session: Session, series_id: int, uids: Sequence[str], detail: str
    ) -> Job | None:
        wanted = set(uids)
        sources = [
            i for i in ingest.series_candidates(session, series_id) if i.sop_instance_uid in wanted
        ]
        series = session.get(Series, series_id)
        if series is None or not sources:
            return None
        job = ingest.open_job(session, series, sources, self.model_version, detail=detail)
        if job is not None:
            logger.info(
                "job_opened job=%d series=%s instances=%d reason=%s",
                job.id,
                series.series_instance_uid,
                len(sources),
                detail,
            )
        return job

    def on_arrival(
        self, session: Session, series_id: int, sop_instance_uid: str, view: str | None
    ) -> Job | None:
        """Open the job that the arrival of ``sop_instance_uid`` completes, if any."""
        instances = ingest.series_candidates(session, series_id)
        arrived = next((i for i in instances if i.sop_instance_uid == sop_instance_uid), None)
        if arrived is None:
            return None
        others = [self._candidate(i) for i in instances if i is not arrived]
        if arrived.number_of_frames == 1 and view is not None and not others:
            return None  # the first view of a pair: wait for the other one
        uids = complete_on_arrival(self._candidate(arrived, view), others)
        if uids is None:
            return None
        detail = "complete: 2-frame whole-body" if len(uids) == 1 else "complete: both views"
        return self._open(session, series_id, uids, detail)

    def on_sweep(self, session: Session, series_id: int, *, quiet: bool) -> Job | None:
        """For a series without a job: open it if complete, or, once quiet, with what came."""
        instances = ingest.series_candidates(session, series_id)
        uids = complete_series([self._candidate(i) for i in instances])
        if uids is not None:
            return self._open(session, series_id, uids, "complete (found by the sweeper)")
        if not quiet or not instances:
            return None
        uids = tuple(i.sop_instance_uid for i in instances)
        return self._open(session, series_id, uids, f"quiet timer: {len(uids)} instance(s)")
