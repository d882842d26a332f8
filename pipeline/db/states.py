"""The states a job, an export and a review pass through (DESIGN.md "Processing states").

Stored by value as plain strings (``native_enum=False`` in spirit: no PostgreSQL enum type, so a
new member needs no DDL). The allowed job transitions are data, checked in one place.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """One (series, model version) job: ``received → queued → running → segmented → exported``."""

    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    SEGMENTED = "segmented"
    EXPORTED = "exported"
    SKIPPED = "skipped"  # not a whole-body bone scan; reason kept
    FAILED = "failed"  # permanent error; reason kept
    EXPORT_FAILED = "export_failed"  # every export retry spent; reason kept


class Stage(StrEnum):
    """Per-stage timestamps of a job (``job_events.stage``): latency per stage comes from these.

    ``received`` is the first instance's arrival, ``complete`` the moment the scan was whole and
    its job opened; the others are marked by the listener and the workers as they happen.
    """

    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    STARTED = "started"
    INFERENCE_DONE = "inference_done"
    SEG_WRITTEN = "seg_written"
    SENT = "sent"
    VERIFIED = "verified"


class ExportState(StrEnum):
    """Delivery of one result object to one destination."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ReviewState(StrEnum):
    """A radiologist's verdict on a job's result."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


TERMINAL_JOB_STATES = frozenset({JobState.EXPORTED, JobState.SKIPPED, JobState.FAILED})

# Which state may follow which. Reprocessing opens a new job rather than rewinding an old one,
# but a retry may move a failed export back to segmented, and a lost worker's job back to queued.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVED: frozenset({JobState.QUEUED, JobState.SKIPPED, JobState.FAILED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.SKIPPED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SEGMENTED, JobState.QUEUED, JobState.SKIPPED, JobState.FAILED}
    ),
    JobState.SEGMENTED: frozenset({JobState.EXPORTED, JobState.EXPORT_FAILED}),
    JobState.EXPORTED: frozenset({JobState.SEGMENTED}),
    JobState.EXPORT_FAILED: frozenset({JobState.SEGMENTED, JobState.EXPORTED}),
    JobState.SKIPPED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
}


class InvalidTransitionError(ValueError):
    """A job was asked to move to a state that may not follow its current one."""


def check_transition(current: JobState | None, target: JobState) -> None:
    """Raise :class:`InvalidTransitionError` unless a job in ``current`` may move to ``target``.

    ``current`` is ``None`` for a job being created, which may start as received or queued
    (or skipped, for a series that is not a bone scan).
    """
    allowed = (
        frozenset({JobState.RECEIVED, JobState.QUEUED, JobState.SKIPPED})
        if current is None
        else JOB_TRANSITIONS[current]
    )
    if target not in allowed:
        raise InvalidTransitionError(f"a job in state {current} cannot move to {target}")
