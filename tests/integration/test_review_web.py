"""The review page (``bonescan review-server``) as a real subprocess over a real database (SQLite
and PostgreSQL), spoken to over HTTP with :mod:`http.client`.

The study under review is made by the real pipeline in-process: a synthetic 2-frame NM scan in
the spool, its rows as the listener writes them, then the segment task's body
(:func:`pipeline.tasks.segment.run_segment`) with the tiny test model writes the SEG and the
result rows. The page must then show both views with that SEG's mask in red and record an
accept like ``bonescan review`` does (review row + audit row).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import migrate
from pipeline.db.ingest import ReceivedInstance, add_instance, open_job
from pipeline.db.models import AuditEvent, Job, Result, Review
from pipeline.db.session import make_engine, make_session_factory
from pipeline.db.states import JobState
from pipeline.model_version import current_model_version
from pipeline.review_web.auth import (
    PasswordHash,
    PasswordHashError,
    SessionSigner,
    clean_user_name,
    hash_password,
)
from pipeline.settings import load_settings
from pipeline.tasks.metrics import WorkerMetrics
from pipeline.tasks.runtime import Runtime
from pipeline.tasks.segment import run_segment
from tests.conftest import free_port
from tests.integration.conftest import REPO, port_open, wait_for
from tests.integration.test_cli_admin import Seeder
from tests.integration.test_pipeline import write_scan

PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)
REVIEWER = "Dr Test Reviewer"
PATIENT = 1  # seed 11, patient 1: the tiny model finds a few thousand pixels on each view
Mask = npt.NDArray[np.bool_]


# ---------------------------------------------------------------------------------------------
# Seeding: a study segmented by the real pipeline code


@dataclass(frozen=True)
class SegmentedStudy:
    study_id: int
    job_id: int
    patient_name: str
    patient_id: str
    seg_path: Path
    masks: dict[str, Mask]  # view → full-frame mask, read back from the SEG file


def seg_masks(session_factory: sessionmaker[Session], job_id: int) -> dict[str, Mask]:
    """view → the mask of the SEG the pipeline wrote for ``job_id``, on its source frame."""
    with session_factory() as session:
        results = list(session.scalars(select(Result).where(Result.job_id == job_id)))
    masks: dict[str, Mask] = {}
    for result in results:
        seg = hd.seg.segread(result.seg_path)
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=result.source_sop_instance_uid,
            source_frame_numbers=[result.source_frame_number],
            segment_numbers=[1],
            assert_missing_frames_are_empty=False,
        )
        masks[result.view] = pixels[0, :, :, 0].astype(bool)
    return masks


def seed_segmented_study(url: str, data_dir: Path, weights: Path) -> SegmentedStudy:
    """Migrate ``url``, receive a synthetic scan as the listener would and segment it with the
    segment task's own code (tiny model, CPU)."""
    migrate.upgrade(url)
    (path,) = write_scan(data_dir / "spool", PATIENT)
    dataset = dcmread(path)
    received = ReceivedInstance(
        study_instance_uid=dataset.StudyInstanceUID,
        series_instance_uid=dataset.SeriesInstanceUID,
        sop_instance_uid=dataset.SOPInstanceUID,
        sop_class_uid=dataset.SOPClassUID,
        calling_ae_title="MODALITY",
        called_ae_title="BONESCAN",
        transfer_syntax_uid=dataset.file_meta.TransferSyntaxUID,
        size_bytes=path.stat().st_size,
        content_digest=hashlib.sha256(path.read_bytes()).hexdigest(),
        spool_path=str(path),
        number_of_frames=int(dataset.NumberOfFrames),
        skip_reason=None,
        modality=dataset.Modality,
        series_number=int(dataset.SeriesNumber),
        series_description=dataset.get("SeriesDescription"),
        patient_name=str(dataset.PatientName),
        patient_id=str(dataset.PatientID),
        study_date=dataset.get("StudyDate"),
        study_description=dataset.get("StudyDescription"),
    )
    settings = load_settings(database_url=url, data_dir=data_dir, weights=weights, device="cpu")
    engine = make_engine(url, connect_timeout_s=60)
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            instance = add_instance(session, received)
            version = current_model_version(settings)
            job = open_job(session, instance.series, [instance], version)
            assert job is not None
            job_id, study_id = job.id, instance.series.study_id
        runtime = Runtime(settings)
        try:
            outcome = run_segment(runtime, job_id, WorkerMetrics(CollectorRegistry()))
        finally:
            runtime.dispose()
        assert outcome.seg_sop_instance_uid, outcome
        with factory() as session:
            job_row = session.get(Job, job_id)
            assert job_row is not None
            assert job_row.state == JobState.SEGMENTED, (job_row.state, job_row.error)
            seg_path = Path(
                session.scalars(select(Result.seg_path).where(Result.job_id == job_id)).first()
                or ""
            )
        masks = seg_masks(factory, job_id)
    finally:
        engine.dispose()
    assert set(masks) == {"anterior", "posterior"}
    assert all(mask.sum() > 100 for mask in masks.values()), "the test model found nothing"
    return SegmentedStudy(
        study_id=study_id,
        job_id=job_id,
        patient_name=str(dataset.PatientName),
        patient_id=str(dataset.PatientID),
        seg_path=seg_path,
        masks=masks,
    )


def red_pixels(png: bytes) -> Mask:
    """Where a rendered overlay is red: the mask blends red over grey (R = G = B elsewhere)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return (rgb[:, :, 0] - np.maximum(rgb[:, :, 1], rgb[:, :, 2])) > 50


# ---------------------------------------------------------------------------------------------
# The server and an HTTP client


@dataclass
class ReviewServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    database_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


StartServer = Callable[..., ReviewServer]


def review_env(clean_env: dict[str, str], database_url: str, **extra: str) -> dict[str, str]:
    return {
        **clean_env,
        "BONESCAN_DATABASE_URL": database_url,
        "BONESCAN_REVIEW_PASSWORD_HASH": PASSWORD_HASH,
        "BONESCAN_LOG_FORMAT": "text",
        "PYTHONPATH": str(REPO),
        **extra,
    }


@pytest.fixture
def start_server(clean_env: dict[str, str], tmp_path: Path) -> Iterator[StartServer]:
    """Start ``bonescan review-server`` on a free port and wait until it listens."""
    started: list[ReviewServer] = []

    def start(database_url: str, **extra: str) -> ReviewServer:
        port = free_port()
        log_path = tmp_path / f"review-server-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "review-server", "--port", str(port)],
                cwd=tmp_path / "cwd",
                env=review_env(clean_env, database_url, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = ReviewServer(process, port, log_path, database_url)
        started.append(server)
        wait_for(
            lambda: port_open(port) or not server.alive(),
            timeout=120,  # a deadline for busy hosts, not a measurement
            what="the review server to listen",
        )
        if not server.alive():
            pytest.fail(f"review-server exited {process.returncode}:\n{server.log()}")
        return server

    yield start
    for server in started:
        if server.alive():
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def location(self) -> str:
        return self.headers.get("Location", "")


@dataclass
class Client:
    """One browser's worth of HTTP: keeps the session cookie, follows no redirects."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, **headers: str
    ) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            connection.close()
        for cookie in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return reply

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, **headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Reply:
        return self.request("POST", path, form, **headers)

    def login(self, user: str = REVIEWER, password: str = PASSWORD) -> Reply:
        return self.post("/login", {"user": user, "password": password, "next": "/"})


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:2000]
    return match[1]


def reviews(url: str, job_id: int) -> list[Review]:
    engine = make_engine(url, connect_timeout_s=60)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(Review).where(Review.job_id == job_id)))
    finally:
        engine.dispose()


def audits(url: str, action: str) -> list[AuditEvent]:
    engine = make_engine(url, connect_timeout_s=60)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))
    finally:
        engine.dispose()


def assert_one_line_page(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.status, reply.text[:500])
    assert "Traceback" not in reply.text
    assert reply.text.count('id="error"') == 1


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture
def segmented(
    clean_env: dict[str, str], database_url: str, tiny_weights: Path
) -> tuple[SegmentedStudy, str]:
    data_dir = Path(clean_env["BONESCAN_DATA_DIR"])
    study = seed_segmented_study(database_url, data_dir, tiny_weights)
    # and an older study still running: listed below, nothing to review yet
    seeder = Seeder(database_url, data_dir)
    try:
        seeder.study(JobState.RUNNING, patient="ROE^RICHARD")
    finally:
        seeder.engine.dispose()
    return study, database_url


def test_reviewer_logs_in_sees_the_overlay_and_accepts_and_the_review_is_stored(
    segmented: tuple[SegmentedStudy, str], start_server: StartServer
) -> None:
    study, url = segmented
    server = start_server(url)
    client = Client(server.port)
    study_path = f"/studies/{study.study_id}"
    image_path = f"{study_path}/jobs/{study.job_id}/anterior.png"

    # Nothing without a login: pages and images redirect, a POST is refused.
    for path in ("/", study_path, image_path):
        reply = client.get(path)
        assert reply.status == 303, (path, reply.status)
        assert reply.location().startswith("/login"), reply.location()
        assert study.patient_name.encode() not in reply.body
    refused = client.post(f"{study_path}/review", {"decision": "accept", "comment": "x"})
    assert refused.status == 403
    assert client.get("/login").status == 200

    # A wrong password (or no name) gives no session.
    for user, password in ((REVIEWER, "wrong password"), ("", PASSWORD)):
        reply = client.login(user, password)
        assert reply.status == 401
        assert "Wrong name or password" in reply.text
        assert not client.cookies

    # The right one does: an HttpOnly, SameSite=Strict cookie.
    reply = client.login()
    assert reply.status == 303
    assert reply.location() == "/"
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie

    # The worklist: newest study first, its state, lesions per view and review state.
    page = client.get("/")
    assert page.status == 200
    assert page.text.index(study.patient_name) < page.text.index("ROE^RICHARD")
    row = page.text[page.text.index(study.patient_name) :].split("</tr>")[0]
    assert study.patient_id in row
    assert "segmented" in row
    assert "to review" in row
    assert re.search(r"ant \d+ / pos \d+", row), row
    assert f'href="/studies/{study.study_id}"' in page.text
    assert "no-store" in page.headers["Cache-Control"]

    # The study page: both views as images of this job, the lesion table, the review form.
    page = client.get(study_path)
    assert page.status == 200
    for view in ("anterior", "posterior"):
        assert f'src="{study_path}/jobs/{study.job_id}/{view}.png"' in page.text
    assert 'id="lesions"' in page.text
    assert study.patient_id in page.text
    token = csrf_of(page.text)

    # Each image is the view with the SEG's mask in red, exactly where the mask is.
    for view, mask in study.masks.items():
        image = client.get(f"{study_path}/jobs/{study.job_id}/{view}.png")
        assert image.status == 200
        assert image.headers["Content-Type"] == "image/png"
        red = red_pixels(image.body)
        assert red.shape == mask.shape
        np.testing.assert_array_equal(red, mask)

    # A POST without the CSRF token, or with another session's, records nothing.
    form = {"job_id": str(study.job_id), "decision": "accept", "comment": "looks right"}
    assert client.post(f"{study_path}/review", form).status == 403
    other = Client(server.port)
    other.login("Someone Else")
    other_token = csrf_of(other.get("/").text)
    assert client.post(f"{study_path}/review", {**form, "csrf": other_token}).status == 403
    # nor does a form posted from another site, even with the token
    cross = client.post(
        f"{study_path}/review", {**form, "csrf": token}, Origin="http://evil.example"
    )
    assert cross.status == 403
    opaque = client.post(f"{study_path}/review", {**form, "csrf": token}, Origin="null")
    assert opaque.status == 403
    # and a comment is required
    empty = client.post(f"{study_path}/review", {**form, "csrf": token, "comment": "  "})
    assert empty.status == 400
    assert "comment" in empty.text
    assert reviews(url, study.job_id) == []

    # Accept, with a comment: one review row with reviewer and time, and its audit row.
    before = datetime.now(UTC)
    reply = client.post(
        f"{study_path}/review", {**form, "csrf": token, "comment": "2 rib lesions, agree"}
    )
    after = datetime.now(UTC)
    assert reply.status == 303
    assert reply.location().startswith(study_path)
    (review,) = reviews(url, study.job_id)
    assert review.state == "accepted"
    assert review.reviewer == REVIEWER
    assert review.comment == "2 rib lesions, agree"
    assert before <= review.reviewed_at <= after
    (audit,) = audits(url, "review.accept")
    assert audit.actor == REVIEWER
    assert audit.target_id == str(study.job_id)
    assert study.patient_name not in (audit.detail or "")
    page = client.get(reply.location())
    assert "Review recorded." in page.text
    assert "accepted</span> by Dr Test Reviewer" in page.text
    row = client.get("/").text.split(study.patient_name, 1)[1].split("</tr>")[0]
    assert "accepted" in row
    assert REVIEWER in row

    # The log names ids and the reviewer, never the patient.
    log = server.log()
    assert "review_recorded" in log
    assert f"job={study.job_id}" in log
    assert study.patient_name not in log
    assert study.patient_id not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unknown_ids_are_404_pages_and_logout_ends_the_session(
    segmented: tuple[SegmentedStudy, str], start_server: StartServer
) -> None:
    study, url = segmented
    server = start_server(url)
    client = Client(server.port)
    client.login()
    assert_one_line_page(client.get("/studies/999999"), 404)
    assert_one_line_page(client.get(f"/studies/{study.study_id}/jobs/999999/anterior.png"), 404)
    assert_one_line_page(client.get("/studies/abc"), 404)
    assert_one_line_page(client.get("/no/such/page"), 404)
    token = csrf_of(client.get("/").text)
    form = {"csrf": token, "job_id": "999999", "decision": "reject", "comment": "no"}
    assert_one_line_page(client.post(f"/studies/{study.study_id}/review", form), 404)
    # a GET cannot log out (no CSRF token); the button's POST can, and the cookie is dead then
    kept = dict(client.cookies)
    assert client.get("/logout").status == 403
    assert client.post("/logout", {"csrf": token}).status == 303
    assert not client.cookies
    replayed = Client(server.port, cookies=kept)
    assert replayed.get("/").status == 303
    # behind a TLS proxy the cookie is Secure too
    proxied = Client(server.port).post(
        "/login", {"user": REVIEWER, "password": PASSWORD}, X_Forwarded_Proto="https"
    )
    assert proxied.status == 303
    assert "; Secure" in proxied.headers["Set-Cookie"]
    # a forged cookie is no session either
    forged = Client(server.port, cookies={"bonescan_review": kept["bonescan_review"][:-2] + "AA"})
    assert forged.get("/").status == 303


def test_database_down_is_a_503_page_with_one_line(
    clean_env: dict[str, str], start_server: StartServer
) -> None:
    # Nothing listens there: every query fails to connect.
    server = start_server(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    client = Client(server.port)
    assert client.login().status == 303
    reply = client.get("/")
    assert_one_line_page(reply, 503)
    assert "database" in reply.text
    assert server.alive()


def test_metrics_count_requests_by_status_class(
    clean_env: dict[str, str], start_server: StartServer
) -> None:
    metrics_port = free_port()
    server = start_server(
        f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        BONESCAN_REVIEW__METRICS_PORT=str(metrics_port),
    )
    client = Client(server.port)
    assert client.get("/").status == 303  # not logged in: to /login
    assert client.login().status == 303
    assert client.get("/").status == 503  # the database is down
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        lines = page.read().decode().splitlines()
    values = dict(line.rsplit(" ", 1) for line in lines if not line.startswith("#"))
    assert float(values['bonescan_review_requests_total{status="3xx"}']) == 2
    assert float(values['bonescan_review_requests_total{status="5xx"}']) == 1
    assert float(values["bonescan_review_request_seconds_count"]) == 3


def test_refuses_to_start_without_a_password_hash(
    clean_env: dict[str, str], sqlite_url: str
) -> None:
    for value in (None, "md5$abc"):
        env = review_env(clean_env, sqlite_url)
        if value is None:
            del env["BONESCAN_REVIEW_PASSWORD_HASH"]
        else:
            env["BONESCAN_REVIEW_PASSWORD_HASH"] = value
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "review-server", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("error: BONESCAN_REVIEW_PASSWORD_HASH"), lines[0]
        assert done.stdout == ""


def test_hash_password_makes_a_hash_that_logs_in(
    clean_env: dict[str, str], sqlite_url: str, start_server: StartServer
) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "review-server", "hash-password"],
        input="another secret\n",
        env=review_env(clean_env, sqlite_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = made.stdout.strip()
    assert re.fullmatch(r"scrypt\$32768\$8\$1\$[\w-]{22}\$[\w-]{43}", line), line
    migrate.upgrade(sqlite_url)
    server = start_server(sqlite_url, BONESCAN_REVIEW_PASSWORD_HASH=line)
    assert Client(server.port).login(password="another secret").status == 303
    assert Client(server.port).login(password=PASSWORD).status == 401


def test_serve_runs_the_review_page_when_a_hash_is_set(
    clean_env: dict[str, str], tmp_path: Path, tiny_weights: Path
) -> None:
    review_port, listener_port = free_port(), free_port()
    env = {
        **review_env(clean_env, ""),
        "BONESCAN_LISTENER__PORT": str(listener_port),
        "BONESCAN_REVIEW__PORT": str(review_port),
        "BONESCAN_WEIGHTS": str(tiny_weights),
    }
    del env["BONESCAN_DATABASE_URL"]  # embedded defaults: SQLite in the data dir
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--concurrency", "1"],
            cwd=tmp_path / "cwd",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: port_open(review_port) or serve.poll() is not None,
            timeout=240,  # a deadline for busy hosts, not a measurement
            what="serve's review page",
            every=0.2,
        )
        assert serve.poll() is None, log_path.read_text()
        client = Client(review_port)
        assert client.get("/").status == 303
        assert client.login().status == 303
        page = client.get("/")
        assert page.status == 200
        assert "No studies yet" in page.text
        assert "serve_started child=review" in log_path.read_text()
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=180) == 0, log_path.read_text()
        assert not port_open(review_port)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)


def test_password_hashes_and_session_cookies_refuse_what_they_should() -> None:
    # The hash line: parsed back, verified, and malformed lines refused with the reason.
    parsed = PasswordHash.parse(PASSWORD_HASH)
    assert str(parsed) == PASSWORD_HASH
    assert parsed.verify(PASSWORD)
    assert not parsed.verify(PASSWORD + " ")
    for bad in ("", "scrypt$1$8$1$c2FsdHNhbHQ$x", "scrypt$3$8$1$c2FsdHNhbHQ$" + "A" * 43, "md5$x"):
        with pytest.raises(PasswordHashError):
            PasswordHash.parse(bad)
    # Sessions: signed, expiring (a fake clock), and tied to their CSRF token.
    now = [1_000_000.0]
    signer = SessionSigner(b"k" * 32, max_age_s=3600, clock=lambda: now[0])
    cookie, session = signer.issue(REVIEWER)
    assert signer.read(cookie) == session
    assert SessionSigner(b"j" * 32).read(cookie) is None  # another server's secret
    payload, _, mac = cookie.partition(".")
    assert signer.read(payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + mac) is None
    token = signer.csrf_token(session)
    assert signer.csrf_ok(session, token)
    assert not signer.csrf_ok(signer.issue(REVIEWER)[1], token)
    assert not signer.csrf_ok(session, None)
    now[0] += 3601
    assert signer.read(cookie) is None
    assert clean_user_name("  Dr   Who ") == "Dr Who"
    assert clean_user_name("") is None
    assert clean_user_name("x" * 65) is None
