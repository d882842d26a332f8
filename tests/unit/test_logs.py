"""Log formats: JSON lines carry the ``extra=`` context as fields."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.logs import JsonFormatter, TextFormatter, configure_logging


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("bonescan.test", logging.INFO, "", 1, "stored %s", ("x",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_hold_message_and_context() -> None:
    line = JsonFormatter().format(_record(sop_instance_uid="1.2.3", job_id=7))
    entry = json.loads(line)
    assert entry["message"] == "stored x"
    assert entry["level"] == "info"
    assert entry["sop_instance_uid"] == "1.2.3"
    assert entry["job_id"] == 7


def test_text_lines_append_context() -> None:
    assert TextFormatter().format(_record(job_id=7)).endswith("stored x job_id=7")


def test_configure_quietens_pynetdicom(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "json")
    assert logging.getLogger("pynetdicom").level == logging.WARNING
    logging.getLogger("bonescan.test").info("hello", extra={"job_id": 1})
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["job_id"] == 1
