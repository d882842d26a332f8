"""The review page as a WSGI application: routing, login, CSRF, and the database calls.

Routes (every one but ``/login`` needs a session; a GET without one is sent to ``/login``):

- ``GET /login``, ``POST /login`` (reviewer name + shared password), ``POST /logout``;
- ``GET /``: the worklist;
- ``GET /studies/<id>``: both views with the SEG overlay, lesions, the review form;
- ``GET /studies/<id>/jobs/<job>/<view>.png``: one view with its mask in red;
- ``POST /studies/<id>/review``: accept / reject with a comment (CSRF token required),
  recorded with :func:`pipeline.db.admin.add_review` like ``bonescan review`` (audited).

A database that does not answer gives a 503 page, an unknown id a 404 page, anything else a 500
page; the browser never sees a traceback. Logs carry methods, paths (ids only), statuses and
reviewer names, never patient data.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from wsgiref.types import StartResponse, WSGIEnvironment

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from pipeline.db import admin
from pipeline.db.states import ReviewState
from pipeline.review_web import pages, worklist
from pipeline.review_web.auth import PasswordHash, Session, SessionSigner, clean_user_name
from pipeline.review_web.metrics import ReviewMetrics
from pipeline.review_web.overlay import OverlayUnavailableError, overlay_png

logger = logging.getLogger(__name__)

COOKIE = "bonescan_review"
MAX_FORM_BYTES = 64 * 1024
MAX_COMMENT = 2000
HTML = "text/html; charset=utf-8"
# No script at all; styles inline; images and forms only from here; never framed.
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on our own
    # form posts, and the Origin check below could not tell them from another site's.
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),  # pages and images hold patient data
]
WORKLIST = re.compile(r"^/$")
STUDY = re.compile(r"^/studies/(\d{1,18})$")
REVIEW = re.compile(r"^/studies/(\d{1,18})/review$")
IMAGE = re.compile(r"^/studies/(\d{1,18})/jobs/(\d{1,18})/(anterior|posterior)\.png$")


@dataclass
class Request:
    """What a handler needs of one WSGI request."""

    method: str
    path: str
    query: dict[str, list[str]]
    cookies: dict[str, str]
    form: dict[str, list[str]] = field(default_factory=dict)
    session: Session | None = None
    cross_site: bool = False
    https: bool = False  # directly, or behind a TLS proxy that says so

    def form_value(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = HTML
    headers: list[tuple[str, str]] = field(default_factory=list)


def redirect(location: str, *headers: tuple[str, str]) -> Response:
    return Response(HTTPStatus.SEE_OTHER, b"", headers=[("Location", location), *headers])


def error(status: HTTPStatus, line: str) -> Response:
    return Response(status, pages.error_page(f"{status.value} {status.phrase}", line))


def _local_path(value: str | None) -> str:
    """``value`` if it is a path on this site (no open redirect), else ``/``."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


class ReviewApp:
    """The WSGI callable; one per server process."""

    def __init__(
        self,
        sessions: sessionmaker[DbSession],
        password: PasswordHash,
        signer: SessionSigner | None = None,
        metrics: ReviewMetrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.password = password
        self.signer = signer or SessionSigner()
        self.metrics = metrics or ReviewMetrics()

    # -------------------------------------------------------------------------------- WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request: Request | None = None
        try:
            request = self._request(environ)
            response = self._dispatch(request)
        except SQLAlchemyError as failure:
            logger.warning("review_database_unavailable error=%s", type(failure).__name__)
            response = error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "The tracking database does not answer; try again in a minute.",
            )
        except Exception:  # the boundary: log it, show one line, never the traceback
            logger.exception("review_request_failed path=%s", environ.get("PATH_INFO", ""))
            response = error(HTTPStatus.INTERNAL_SERVER_ERROR, "Something went wrong; see the log.")
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        self.metrics.observe(response.status, time.perf_counter() - started)
        logger.info(
            "review_request method=%s path=%s status=%d user=%s ms=%.1f",
            environ.get("REQUEST_METHOD", ""),
            environ.get("PATH_INFO", ""),  # ids only: patient data never goes in a URL
            response.status,
            request.session.user if request and request.session else "-",
            (time.perf_counter() - started) * 1000,
        )
        return [response.body]

    def _request(self, environ: WSGIEnvironment) -> Request:
        cookies: dict[str, str] = {}
        try:
            jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
            cookies = {name: morsel.value for name, morsel in jar.items()}
        except CookieError:
            pass  # a malformed Cookie header is no session
        request = Request(
            method=environ.get("REQUEST_METHOD", "GET").upper(),
            path=environ.get("PATH_INFO", "/") or "/",
            query=urllib.parse.parse_qs(environ.get("QUERY_STRING", "")),
            cookies=cookies,
        )
        request.https = (
            environ.get("wsgi.url_scheme") == "https"
            or environ.get("HTTP_X_FORWARDED_PROTO", "").lower() == "https"
        )
        request.session = self.signer.read(cookies.get(COOKIE))
        if request.method == "POST":
            request.form = self._form(environ)
            request.cross_site = not self._same_origin(environ)
        return request

    @staticmethod
    def _form(environ: WSGIEnvironment) -> dict[str, list[str]]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0 or length > MAX_FORM_BYTES:
            return {}
        body = environ["wsgi.input"].read(length)
        return urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

    @staticmethod
    def _same_origin(environ: WSGIEnvironment) -> bool:
        """A POST from another site is refused even before the CSRF token (defence in depth)."""
        origin: str | None = environ.get("HTTP_ORIGIN")
        if origin is None:
            return True  # not a browser, or an old one: the CSRF token still guards
        host: str = environ.get("HTTP_HOST", "")
        return origin != "null" and urllib.parse.urlsplit(origin).netloc == host

    # ----------------------------------------------------------------------------- routing

    def _dispatch(self, request: Request) -> Response:
        if request.cross_site:
            return error(HTTPStatus.FORBIDDEN, "Forms are accepted only from this site.")
        if request.path == "/login":
            return self._login(request)
        if request.path == "/logout":
            return self._logout(request)
        if request.path == "/favicon.ico":  # browsers ask for it before any login
            return Response(HTTPStatus.NOT_FOUND, b"", content_type="text/plain")
        return self._routed(request)

    def _routed(self, request: Request) -> Response:
        if request.session is None:
            if request.method == "GET":
                next_path = urllib.parse.quote(request.path, safe="/")
                return redirect(f"/login?next={next_path}")
            return error(HTTPStatus.FORBIDDEN, "Log in first.")
        routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", WORKLIST, self._worklist),
            ("GET", STUDY, self._study),
            ("GET", IMAGE, self._image),
            ("POST", REVIEW, self._review),
        ]
        for method, pattern, handler in routes:
            match = pattern.match(request.path)
            if match:
                if request.method != method:
                    return error(HTTPStatus.METHOD_NOT_ALLOWED, f"Use {method} here.")
                return handler(request, *match.groups())
        return error(HTTPStatus.NOT_FOUND, "There is no such page.")

    # ------------------------------------------------------------------------------ login

    def _login(self, request: Request) -> Response:
        next_path = _local_path((request.query.get("next") or [""])[0])
        if request.method == "GET":
            return Response(HTTPStatus.OK, pages.login_page(next_path=next_path))
        if request.method != "POST":
            return error(HTTPStatus.METHOD_NOT_ALLOWED, "Use GET or POST here.")
        typed = request.form_value("user") or ""
        user = clean_user_name(typed)
        password = request.form_value("password") or ""
        next_path = _local_path(request.form_value("next"))
        if user is None or not self.password.verify(password):
            logger.warning("review_login_refused user_given=%s", user is not None)
            page = pages.login_page(
                error="Wrong name or password.", user=typed[:64], next_path=next_path
            )
            return Response(HTTPStatus.UNAUTHORIZED, page)
        cookie, session = self.signer.issue(user)
        logger.info("review_login user=%s", session.user)
        return redirect(next_path, ("Set-Cookie", self._cookie(cookie, secure=request.https)))

    def _logout(self, request: Request) -> Response:
        if request.session is not None:
            if request.method != "POST" or not self.signer.csrf_ok(
                request.session, request.form_value("csrf")
            ):
                return error(HTTPStatus.FORBIDDEN, "Log out with the button on the page.")
            self.signer.end(request.session)
            logger.info("review_logout user=%s", request.session.user)
        return redirect("/login", ("Set-Cookie", self._cookie("", max_age=0, secure=request.https)))

    @staticmethod
    def _cookie(value: str, *, max_age: int | None = None, secure: bool = False) -> str:
        # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it;
        # Secure when the browser came over HTTPS (a TLS proxy in front).
        extra = f"; Max-Age={max_age}" if max_age is not None else ""
        extra += "; Secure" if secure else ""
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{extra}"

    # ------------------------------------------------------------------------------ pages

    def _csrf(self, request: Request) -> str:
        assert request.session is not None
        return self.signer.csrf_token(request.session)

    def _worklist(self, request: Request) -> Response:
        assert request.session is not None
        with self.sessions() as session:
            rows = worklist.worklist(session)
        page = pages.worklist_page(rows, user=request.session.user, csrf=self._csrf(request))
        return Response(HTTPStatus.OK, page)

    def _study(self, request: Request, study_id: str) -> Response:
        assert request.session is not None
        with self.sessions() as session:
            study = worklist.study_page(session, int(study_id))
        if study is None:
            return error(HTTPStatus.NOT_FOUND, f"There is no study {study_id}.")
        note = "Review recorded." if request.query.get("reviewed") else None
        page = pages.study_page(
            study, user=request.session.user, csrf=self._csrf(request), note=note
        )
        return Response(HTTPStatus.OK, page)

    def _image(self, request: Request, study_id: str, job_id: str, view: str) -> Response:
        with self.sessions() as session:
            source = worklist.overlay_source(session, int(study_id), int(job_id), view)
        if source is None:
            return error(HTTPStatus.NOT_FOUND, "There is no such view.")
        try:
            png = overlay_png(source)
        except OverlayUnavailableError as problem:
            logger.warning(
                "review_overlay_unavailable job=%s view=%s error=%s", job_id, view, problem
            )
            return error(HTTPStatus.NOT_FOUND, "The files of this result are gone (purged?).")
        return Response(HTTPStatus.OK, png, content_type="image/png")

    def _review(self, request: Request, study_id: str) -> Response:
        session_ = request.session
        assert session_ is not None
        if not self.signer.csrf_ok(session_, request.form_value("csrf")):
            logger.warning("review_csrf_refused user=%s", session_.user)
            return error(HTTPStatus.FORBIDDEN, "The form has expired; reload the page.")
        decision = {"accept": ReviewState.ACCEPTED, "reject": ReviewState.REJECTED}.get(
            request.form_value("decision") or ""
        )
        job_text = request.form_value("job_id") or ""
        comment = (request.form_value("comment") or "").strip()
        if decision is None or not job_text.isdigit():
            return error(HTTPStatus.BAD_REQUEST, "Choose accept or reject for a job.")
        if not comment or len(comment) > MAX_COMMENT:
            return self._refused(
                request, study_id, f"A comment (1–{MAX_COMMENT} characters) is required."
            )
        job_id = int(job_text)
        with self.sessions() as session:
            if not worklist.job_in_study(session, int(study_id), job_id):
                return error(HTTPStatus.NOT_FOUND, f"Study {study_id} has no job {job_id}.")
        try:
            # The same call as `bonescan review`: the review and its audit row commit together.
            with self.sessions.begin() as session:
                review = admin.add_review(
                    session, job_id, decision, reviewer=session_.user, comment=comment
                )
                review_id = review.id
        except admin.AdminError as problem:
            return self._refused(request, study_id, str(problem))
        logger.info(
            "review_recorded job=%d review=%d state=%s user=%s",
            job_id,
            review_id,
            decision.value,
            session_.user,
        )
        return redirect(f"/studies/{int(study_id)}?reviewed={review_id}")

    def _refused(self, request: Request, study_id: str, line: str) -> Response:
        assert request.session is not None
        with self.sessions() as session:
            study = worklist.study_page(session, int(study_id))
        if study is None:
            return error(HTTPStatus.NOT_FOUND, f"There is no study {study_id}.")
        page = pages.study_page(
            study, user=request.session.user, csrf=self._csrf(request), error=line
        )
        return Response(HTTPStatus.BAD_REQUEST, page)
