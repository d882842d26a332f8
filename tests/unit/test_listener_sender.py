"""The listener's side of the sender process: which jobs it holds, so the sweep leaves them."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import cast

import pytest

from listeners import sender as sender_module
from listeners.sender import SenderProcess
from pipeline.settings import Settings


class _Running:
    def is_alive(self) -> bool:
        return True


_CHILD_ENDS: list[Connection] = []  # the child's ends of the job pipes, open while tests run


def _sender(reports: list[tuple[list[int], int]]) -> SenderProcess:
    """A SenderProcess that believes its child runs: job ids go into a pipe nobody reads."""
    sender = SenderProcess(
        cast(Settings, None), lambda sent, unsent: reports.append((sent, unsent))
    )
    sender._process = _Running()  # type: ignore[assignment]
    child_end, sender._jobs = multiprocessing.Pipe(duplex=False)
    _CHILD_ENDS.append(child_end)
    return sender


def test_jobs_handed_over_are_in_flight_until_reported() -> None:
    reports: list[tuple[list[int], int]] = []
    sender = _sender(reports)
    assert all(sender.submit(job_id) for job_id in (7, 8, 9))
    assert sender.in_flight() == {7, 8, 9}
    listener_reports, child_reports = multiprocessing.Pipe(duplex=False)
    child_reports.send(([7, 8], [9]))  # 9: the broker failed
    child_reports.close()
    sender._read_reports(listener_reports)  # returns at the pipe's end
    assert reports == [([7, 8], 1)]
    assert sender.in_flight() == set()


def test_a_job_the_child_sits_on_is_the_sweeps_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = _sender([])
    assert sender.submit(1)
    monkeypatch.setattr(sender_module, "IN_FLIGHT_S", 0.05)
    time.sleep(0.1)
    assert sender.submit(2)
    assert sender.in_flight() == {2}


def test_a_dead_child_holds_nothing() -> None:
    sender = _sender([])
    assert sender.submit(1)
    sender._process = None
    assert sender.in_flight() == set()
