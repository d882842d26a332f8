"""The browser tier: the OHIF viewer (the prebuilt ``dist/`` of the npm package ``@ohif/app``)
served on 127.0.0.1 against an Orthanc's DICOMweb, driven by Playwright in Debian's headless
Chromium.

One origin serves both the viewer and ``/dicom-web`` (reverse-proxied to Orthanc), because
Orthanc sends no CORS headers; every other path falls back to ``index.html`` (OHIF routes like
``/viewer?StudyInstanceUIDs=…``). ``/app-config.js`` is generated here: one DICOMweb data source
at ``/dicom-web``. Nothing of ``dist/`` is modified.

What is missing fails the test with the command that installs it (STYLE.md: no skips).
"""

from __future__ import annotations

import json
import mimetypes
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import free_port
from tests.integration.conftest import tiny_weights  # noqa: F401 - a fixture, shared
from tests.integration.pacs import OrthancPacs, StartOrthanc

REPO = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"  # keep in step with install.sh
OHIF_DIST = REPO / ".ohif" / OHIF_VERSION / "dist"
CHROMIUM = Path("/usr/bin/chromium")
DEADLINE_S = 180.0  # a deadline for page waits on busy 2-core hosts, not a measurement
INSTALL = f"./install.sh (apt-get install chromium; npm pack @ohif/app@{OHIF_VERSION}, unpacked)"

# FACTS.md "Driving OHIF in a test": the flags that keep Debian's chromium quiet and offline.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-device-scale-factor=1",
]

APP_CONFIG = {
    "routerBasename": "/",
    "extensions": [],
    "modes": [],
    "showStudyList": True,
    "maxNumberOfWebWorkers": 1,
    "showWarningMessageForCrossOrigin": False,
    "showCPUFallbackMessage": False,
    "showLoadingIndicator": False,
    "strictZSpacingForVolumeViewport": True,
    "defaultDataSourceName": "orthanc",
    "investigationalUseDialog": {"option": "never"},
    # no onboarding tour: its dimmed backdrop would cover the viewport's pixels
    "customizationService": {"ohif.tours": {"$set": []}},
    "dataSources": [
        {
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "bonescan test Orthanc",
                "name": "orthanc",
                "wadoUriRoot": "/dicom-web",
                "qidoRoot": "/dicom-web",
                "wadoRoot": "/dicom-web",
                "qidoSupportsIncludeField": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "omitQuotationForMultipartRequest": True,
                "bulkDataURI": {"enabled": True},
            },
        }
    ],
}


def _split_includefield(query: str) -> str:
    """Orthanc's DICOMweb plugin 1.7 ignores a comma-separated ``includefield`` (FACTS.md):
    repeat the parameter instead."""
    pairs: list[tuple[str, str]] = []
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key == "includefield":
            pairs.extend((key, part) for part in value.split(",") if part)
        else:
            pairs.append((key, value))
    return urllib.parse.urlencode(pairs)


class OhifServer:
    """The viewer's ``dist/`` and a ``/dicom-web`` reverse proxy to ``dicomweb_root``, on one
    free port of 127.0.0.1, in a thread."""

    def __init__(self, dist: Path, dicomweb_root: str) -> None:
        self.dist = dist.resolve()
        self.dicomweb_root = dicomweb_root.rstrip("/")
        self.app_config = f"window.config = {json.dumps(APP_CONFIG, indent=2)};\n".encode()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy_errors: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=30)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path, _, query = request.path.partition("?")
        if path.startswith("/dicom-web/"):
            self._proxy(request, path, query)
        elif path == "/app-config.js":
            self._send(request, 200, "application/javascript", self.app_config)
        else:
            self._static(request, urllib.parse.unquote(path))

    def _static(self, request: BaseHTTPRequestHandler, path: str) -> None:
        file = (self.dist / path.lstrip("/")).resolve()
        if not file.is_file() or not file.is_relative_to(self.dist):
            file = self.dist / "index.html"  # SPA fallback: OHIF routes itself
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".wasm":
            content_type = "application/wasm"
        self._send(request, 200, content_type, file.read_bytes())

    def _proxy(self, request: BaseHTTPRequestHandler, path: str, query: str) -> None:
        target = f"{self.dicomweb_root}{path.removeprefix('/dicom-web')}"
        if query:
            target += f"?{_split_includefield(query)}"
        headers = {"Accept": request.headers.get("Accept", "*/*")}
        upstream = urllib.request.Request(target, headers=headers)
        try:
            with urllib.request.urlopen(upstream, timeout=60) as response:
                status, body = response.status, response.read()
                content_type = response.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
            content_type = error.headers.get("Content-Type", "text/plain")
            if status >= 500:
                self.proxy_errors.append(f"{status} {target}")
        self._send(request, status, content_type, body)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(body)


def require_browser_tier() -> None:
    """Fail (not skip) with the install command when a piece of the browser tier is missing."""
    if not (OHIF_DIST / "index.html").is_file():
        pytest.fail(f"OHIF {OHIF_VERSION} is not unpacked in {OHIF_DIST.parent}: run {INSTALL}")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run {INSTALL}")


@pytest.fixture
def dicomweb_orthanc(start_orthanc: StartOrthanc) -> OrthancPacs:
    """An Orthanc whose DICOMweb gives full metadata (FACTS.md: with "MainDicomTags" OHIF
    renders nothing)."""
    return start_orthanc(
        DicomWeb={
            "Enable": True,
            "Root": "/dicom-web/",
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
    )


@pytest.fixture
def ohif(dicomweb_orthanc: OrthancPacs) -> Iterator[OhifServer]:
    """OHIF served against ``dicomweb_orthanc`` on one origin."""
    require_browser_tier()
    server = OhifServer(OHIF_DIST, f"{dicomweb_orthanc.http_url}/dicom-web")
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.proxy_errors == [], f"Orthanc's DICOMweb failed: {server.proxy_errors}"


@contextmanager
def chromium_page(profile: Path, width: int) -> Iterator[Page]:
    """A page of Debian's headless chromium (fresh profile, no downloads), ``width`` × 1600 CSS
    pixels at device scale 1, so that screenshot pixels are canvas (or image) pixels."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run {INSTALL}")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": 1600},
            device_scale_factor=1,
        )
        context.set_default_timeout(DEADLINE_S * 1000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """The OHIF test's page: 1000 × 1600."""
    require_browser_tier()
    with chromium_page(tmp_path / "chromium-profile", 1000) as opened:
        yield opened
