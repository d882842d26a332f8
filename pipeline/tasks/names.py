"""Stable Celery task names, kept in one place (STYLE.md "Names").

Producers (the listener, the CLI) enqueue by these names with ``send_task`` and never import the
task modules, so the listener process never loads torch. Renaming a module must not rename a
message already waiting in the broker: change these strings only with a migration plan.
"""

from __future__ import annotations

from enum import StrEnum


class TaskName(StrEnum):
    """Every task bonescan enqueues, by its wire name."""

    SEGMENT_SERIES = "bonescan.segment_series"
    EXPORT_RESULT = "bonescan.export_result"


class QueueName(StrEnum):
    """The broker queues: segmentation (CPU/GPU heavy) apart from export (network bound)."""

    SEGMENT = "segment"
    EXPORT = "export"
