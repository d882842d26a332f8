"""The listener as a subprocess, dcmtk's echoscu / storescu as the modality."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import redis

from pipeline.db.states import JobState
from tests.conftest import free_port
from tests.integration import dicom_factory as factory
from tests.integration.conftest import (
    AE_TITLE,
    ECHOSCU,
    StartListener,
    dataset_bytes,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def queued_tasks(redis_url: str, queue: str = "segment") -> list[tuple[str, dict[str, object]]]:
    """(task name, kwargs) of every message waiting in a Celery queue on Redis."""
    client = redis.Redis.from_url(redis_url)
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], kwargs))
    client.close()
    return found


def test_echo_answers_success(start_listener: StartListener) -> None:
    listener = start_listener()
    result = subprocess.run(
        [ECHOSCU, "-aec", AE_TITLE, "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_frame_scan_is_spooled_as_sent_recorded_and_enqueued(
    start_listener: StartListener,
    tmp_path: Path,
    redis_url: str,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    url = None if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    metrics_port = free_port()
    listener = start_listener(
        database_url=url, BROKER_URL=redis_url, LISTENER__METRICS_PORT=str(metrics_port)
    )
    ds = factory.nm_whole_body()
    sent = factory.save(ds, tmp_path / "scan.dcm")

    listener.storescu(sent)

    [instance] = listener.instances()
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.calling_ae_title == "MODALITY"
    assert instance.called_ae_title == AE_TITLE
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert instance.number_of_frames == 2
    assert instance.skip_reason is None
    assert instance.series.series_instance_uid == ds.SeriesInstanceUID
    spooled = Path(instance.spool_path)
    assert spooled.parent.parent == listener.spool  # a folder for the day it came (UTC)
    assert spooled.name == f"{ds.SOPInstanceUID}.dcm"
    assert dataset_bytes(spooled) == dataset_bytes(sent)  # the data set exactly as sent
    assert instance.size_bytes == spooled.stat().st_size
    job = wait_for(
        lambda: next((j for j in listener.jobs() if j.state == JobState.QUEUED), None),
        timeout=15,
        what="the job to be queued",
    )
    # At least once: a publish that kombu retried after a slow broker reply may sit there twice
    # (seen on a loaded host); the worker's job lease makes the copy a no-op.
    tasks = queued_tasks(redis_url)
    assert {(name, kwargs["job_id"]) for name, kwargs in tasks} == {
        ("bonescan.segment_series", job.id)
    }
    assert "Test^Patient" not in listener.log()
    assert "TEST-0001" not in listener.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        lines = page.read().decode().splitlines()
    metrics = dict(line.rsplit(" ", 1) for line in lines if not line.startswith("#"))
    assert float(metrics['bonescan_listener_associations_total{outcome="accepted",reason=""}']) == 1
    assert float(metrics['bonescan_listener_instances_received_total{result="stored"}']) == 1
    assert float(metrics["bonescan_listener_received_bytes_total"]) == instance.size_bytes
    assert float(metrics["bonescan_listener_store_handler_seconds_count"]) == 1


def test_scans_arriving_together_are_each_spooled_whole_with_their_digest(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """Four associations at once to one process: a data set that arrives among others is filed
    on its own thread (no hand-offs), one alone overlaps its fsync and digest on other threads;
    either way every file is the data set as sent, under its own new folders, and its row
    carries the SHA-256 of the stored bytes."""
    from tests.integration.test_listener_faults import _send_in_parallel  # a cycle at the top

    listener = start_listener()
    files = [
        factory.save(factory.nm_whole_body(seed=i), tmp_path / "scans" / f"{i:02d}.dcm")
        for i in range(12)
    ]
    _send_in_parallel(listener.port, files, associations=4, timeout=90)

    rows = listener.instances()
    assert len(rows) == len(files)
    sent = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    for row in rows:
        spooled = Path(row.spool_path)
        assert dataset_bytes(spooled) == dataset_bytes(sent[row.sop_instance_uid])
        assert row.content_digest == hashlib.sha256(spooled.read_bytes()).hexdigest()
        assert row.size_bytes == spooled.stat().st_size
    assert list(listener.spool.rglob("*.part")) == []
    assert len(listener.jobs()) == len(files)


def test_resent_instance_is_success_and_recorded_once(
    start_listener: StartListener, tmp_path: Path, redis_url: str
) -> None:
    listener = start_listener(BROKER_URL=redis_url)
    sent = factory.save(factory.nm_whole_body(), tmp_path / "scan.dcm")
    listener.storescu(sent)
    wait_for(lambda: queued_tasks(redis_url), timeout=15, what="the first job")
    listener.storescu(sent)
    assert len(listener.instances()) == 1
    assert len(listener.jobs()) == 1
    assert {kwargs["job_id"] for _, kwargs in queued_tasks(redis_url)} == {listener.jobs()[0].id}


def test_resent_instance_keeps_its_first_file(
    start_listener: StartListener, tmp_path: Path
) -> None:
    """A resend is answered Success and changes nothing on disk: the same bytes again, and the
    same SOP Instance under another study (a corrected header). (One filed on another day,
    whose file would lie elsewhere: test_listener_filing_order.)"""
    listener = start_listener()
    scan = factory.nm_whole_body()
    first = factory.save(scan, tmp_path / "first.dcm")
    listener.storescu(first)
    [spooled] = listener.spool_files()
    original = spooled.read_bytes()
    listener.storescu(first)
    scan.StudyInstanceUID = pydicom.uid.generate_uid()
    scan.PatientName = "Corrected^Name"
    listener.storescu(factory.save(scan, tmp_path / "moved.dcm"))
    assert listener.spool_files() == [spooled]
    assert spooled.read_bytes() == original
    [instance] = listener.instances()
    assert instance.spool_path == str(spooled)
    assert listener.log().count("instance_duplicate") == 2


def test_pair_of_single_frame_views_opens_one_job(
    start_listener: StartListener, tmp_path: Path, redis_url: str
) -> None:
    listener = start_listener(BROKER_URL=redis_url, LISTENER__QUIET_SECONDS="600")
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    anterior = factory.nm_whole_body(
        frames=1, view="anterior", study_uid=study, series_uid=series, seed=1
    )
    posterior = factory.nm_whole_body(
        frames=1, view="posterior", study_uid=study, series_uid=series, seed=2
    )
    listener.storescu(factory.save(anterior, tmp_path / "ant.dcm"))
    assert listener.jobs() == []  # one view alone is not a scan
    listener.storescu(factory.save(posterior, tmp_path / "post.dcm"))
    wait_for(lambda: queued_tasks(redis_url), timeout=15, what="the pair's job")
    # The task is sent before the job is marked queued (after the commit): wait for the mark.
    wait_for(
        lambda: [j.state for j in listener.jobs()] == [JobState.QUEUED],
        timeout=15,
        what="the pair's job to be marked queued",
    )
    assert [i.number_of_frames for i in listener.instances()] == [1, 1]


def test_single_view_opens_a_job_after_the_quiet_timer(
    start_listener: StartListener, tmp_path: Path, redis_url: str
) -> None:
    listener = start_listener(BROKER_URL=redis_url, LISTENER__QUIET_SECONDS="2")
    listener.storescu(factory.save(factory.sc_with_modality_nm(), tmp_path / "sc.dcm"))
    wait_for(listener.jobs, timeout=15, what="the quiet timer's job")
    wait_for(lambda: queued_tasks(redis_url), timeout=15, what="the job to be enqueued")


def test_ct_image_is_stored_and_skipped_with_reason(
    start_listener: StartListener, tmp_path: Path
) -> None:
    listener = start_listener()
    ct = factory.ct_image()
    listener.storescu(factory.save(ct, tmp_path / "ct.dcm"))
    [instance] = listener.instances()
    assert instance.skip_reason == "modality CT is not NM"
    assert Path(instance.spool_path).is_file()
    [job] = listener.jobs()
    assert job.state == JobState.SKIPPED
    assert job.error == "modality CT is not NM"


def _encode_jpeg2000(ds: pydicom.Dataset, path: Path) -> Path:
    ds = pydicom.dcmread(factory.save(ds, path))
    ds.compress(pydicom.uid.JPEG2000Lossless)
    ds.save_as(path)
    return path


def test_compressed_and_other_syntaxes_arrive_and_decode(
    start_listener: StartListener, tmp_path: Path
) -> None:
    listener = start_listener()
    original = factory.nm_whole_body()
    source = factory.save(original, tmp_path / "source.dcm")
    expected = pydicom.dcmread(source).pixel_array
    files: dict[str, Path] = {}
    tools = {
        "1.2.840.10008.1.2.4.70": ["/usr/bin/dcmcjpeg", "+e1"],  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80": ["/usr/bin/dcmcjpls"],  # JPEG-LS lossless
        "1.2.840.10008.1.2.1.99": ["/usr/bin/dcmconv", "+td"],  # deflated explicit LE
        "1.2.840.10008.1.2.2": ["/usr/bin/dcmconv", "+tb"],  # explicit big endian
    }
    for index, (syntax, tool) in enumerate(tools.items()):
        ds = factory.nm_whole_body()
        ds.PixelData = original.PixelData
        plain = factory.save(ds, tmp_path / f"plain{index}.dcm")
        files[syntax] = tmp_path / f"sent{index}.dcm"
        subprocess.run([*tool, str(plain), str(files[syntax])], check=True, timeout=60)
    ds = factory.nm_whole_body()
    ds.PixelData = original.PixelData
    files["1.2.840.10008.1.2.4.90"] = _encode_jpeg2000(ds, tmp_path / "sent-j2k.dcm")
    for syntax, path in files.items():
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax

    # storescu proposes a syntax when told to; each file travels in its own syntax.
    propose = {
        "1.2.840.10008.1.2.4.70": "-xs",
        "1.2.840.10008.1.2.4.80": "-xt",
        "1.2.840.10008.1.2.1.99": "-xd",
        "1.2.840.10008.1.2.2": "-xb",
        "1.2.840.10008.1.2.4.90": "-xv",
    }
    for syntax, path in files.items():
        listener.storescu(path, extra=(propose[syntax],))

    by_syntax = {i.transfer_syntax_uid: i for i in listener.instances()}
    assert set(by_syntax) == set(files)
    for syntax, instance in by_syntax.items():
        assert instance.skip_reason is None, syntax
        decoded = pydicom.dcmread(instance.spool_path).pixel_array
        np.testing.assert_array_equal(decoded, expected, err_msg=syntax)
        received, sent = dataset_bytes(Path(instance.spool_path)), dataset_bytes(files[syntax])
        if syntax == "1.2.840.10008.1.2.1.99":  # storescu deflates afresh: compare inflated
            received, sent = zlib.decompress(received, -15), zlib.decompress(sent, -15)
        assert received == sent, syntax


def test_unknown_calling_ae_is_rejected(start_listener: StartListener, tmp_path: Path) -> None:
    listener = start_listener(LISTENER__ALLOWED_CALLING_AE_TITLES="MODALITY,PACS")
    echo = [ECHOSCU, "-v", "-aec", AE_TITLE, "127.0.0.1", str(listener.port)]
    allowed = subprocess.run(
        [*echo, "-aet", "PACS"], capture_output=True, text=True, timeout=30, check=False
    )
    assert allowed.returncode == 0, allowed.stderr
    refused = subprocess.run(
        [*echo, "-aet", "STRANGER"], capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    result = listener.storescu(
        factory.save(factory.nm_whole_body(), tmp_path / "s.dcm"), calling="STRANGER", check=False
    )
    assert result.returncode != 0
    assert listener.instances() == []
    assert listener.spool_files() == []
    assert "calling_ae_not_recognized" in listener.log()


def test_wrong_called_ae_is_rejected(start_listener: StartListener) -> None:
    listener = start_listener()
    result = subprocess.run(
        [ECHOSCU, "-v", "-aec", "SOMEONE", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
