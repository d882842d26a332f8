"""When a series is complete: pure rules."""

from __future__ import annotations

from listeners.completeness import Candidate, complete_on_arrival, complete_series
from pipeline.db.ingest import idempotency_key
from pipeline.model_version import DEFAULT_MODEL_VERSION, version_in_pickle

TWO = Candidate("1.1", 2, None)
ANT = Candidate("1.2", 1, "anterior")
POST = Candidate("1.3", 1, "posterior")
UNKNOWN = Candidate("1.4", 1, None)


def test_two_frame_instance_is_complete_on_arrival() -> None:
    assert complete_on_arrival(TWO, []) == ("1.1",)


def test_one_view_waits_for_the_other() -> None:
    assert complete_on_arrival(ANT, []) is None
    assert complete_on_arrival(ANT, [Candidate("1.9", 1, "anterior")]) is None
    assert complete_on_arrival(POST, [ANT]) == ("1.2", "1.3")


def test_views_without_a_view_code_wait_for_the_quiet_timer() -> None:
    assert complete_on_arrival(UNKNOWN, [ANT]) is None
    assert complete_series([UNKNOWN, ANT]) is None


def test_series_completeness_does_not_depend_on_arrival_order() -> None:
    assert complete_series([POST, ANT]) == complete_series([ANT, POST]) == ("1.2", "1.3")


def test_idempotency_key_ignores_uid_order_and_changes_with_model_and_generation() -> None:
    key = idempotency_key(["1.2", "1.3"], "abc", "m1", 0)
    assert key == idempotency_key(["1.3", "1.2"], "abc", "m1", 0)
    assert key != idempotency_key(["1.2", "1.3"], "abc", "m2", 0)
    assert key != idempotency_key(["1.2", "1.3"], "abc", "m1", 1)
    assert key != idempotency_key(["1.2", "1.3"], "abd", "m1", 0)


def test_model_version_is_read_from_a_pickle_without_executing_it() -> None:
    import pickle

    payload = {"format_version": 1, "model_version": "msanet-lite-20260101-abcdef12", "x": [1]}
    for protocol in (2, 4, 5):
        assert version_in_pickle(pickle.dumps(payload, protocol)) == payload["model_version"]
    assert version_in_pickle(b"not a pickle") is None
    assert DEFAULT_MODEL_VERSION == "msanet-default"
