"""Job states and their allowed transitions (DESIGN.md "Processing states")."""

from __future__ import annotations

import pytest

from pipeline.db.states import (
    JOB_TRANSITIONS,
    InvalidTransitionError,
    JobState,
    check_transition,
)

HAPPY_PATH = [JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING, JobState.SEGMENTED]


def test_values_are_the_documented_lowercase_strings() -> None:
    assert [state.value for state in JobState] == [
        "received",
        "queued",
        "running",
        "segmented",
        "exported",
        "skipped",
        "failed",
        "export_failed",
    ]


def test_every_state_has_a_transition_rule() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState)


def test_the_happy_path_is_allowed() -> None:
    check_transition(None, JobState.RECEIVED)
    for current, target in zip(HAPPY_PATH, [*HAPPY_PATH[1:], JobState.EXPORTED], strict=True):
        check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.SKIPPED, JobState.QUEUED),
        (JobState.RECEIVED, JobState.EXPORTED),
        (JobState.EXPORTED, JobState.RUNNING),
        (None, JobState.EXPORTED),
    ],
)
def test_forbidden_transitions_name_both_states(current: JobState | None, target: JobState) -> None:
    with pytest.raises(InvalidTransitionError, match=f"cannot move to {target}"):
        check_transition(current, target)
