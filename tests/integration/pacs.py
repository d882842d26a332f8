"""PACS peers for tests (a pytest plugin, loaded from ``tests/conftest.py``): Orthanc with DICOMweb,
dcmtk ``storescp`` with and without Segmentation Storage, and dcmtk ``dcmqrscp`` limited to one
association at a time; each on free ports.

Everything is sent to 127.0.0.1 only (Orthanc 1.10 and storescp bind all interfaces: FACTS.md).
Every server process is started with PR_SET_PDEATHSIG, so it dies with pytest even when pytest
itself is killed, and fixture teardown kills it explicitly: no orphans.

Orthanc takes 1.5-4 s to start here (over 20 s when the 2 cores are busy; most of it loading the
DICOM dictionaries), so one Orthanc serves the whole session and :func:`orthanc` empties it
before each test;
:func:`start_orthanc` starts a separate one with configuration overrides.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Destination
from tests.conftest import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STORESCP = "/usr/bin/storescp"
DCMQRSCP = "/usr/bin/dcmqrscp"
ORTHANC_AE_TITLE = "ORTHANC"
STORESCP_AE_TITLE = "STORESCP"
DCMQRSCP_AE_TITLE = "QRSCP"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the process that started it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _dcmtk_env() -> dict[str, str]:
    # FACTS.md: Debian's DCMTK (storescp, Orthanc) disables Nagle only with TCP_NODELAY=1.
    return {**os.environ, "TCP_NODELAY": "1"}


def _require(binary: str, package: str) -> None:
    if not Path(binary).exists():
        pytest.fail(f"{binary} is missing: install it with apt-get install {package}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def _wait_ready(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    """Poll ``ready`` with a deadline; fail with the log tail if the process exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            _kill(process)
            pytest.fail(f"{what} not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


class OrthancPacs:
    """One Orthanc 1.10 process with DICOMweb, its configuration, storage and REST helpers.

    ``stop()`` kills it (a PACS crash, and instant: a graceful stop takes ~5 s here) and
    ``start()`` brings it back on the same ports with the same storage.
    """

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        _require(ORTHANC, "orthanc orthanc-dicomweb")
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        self.ae_title = str(overrides.get("DicomAet", ORTHANC_AE_TITLE))
        self.destination = Destination(
            name="orthanc", ae_title=self.ae_title, host=HOST, port=self.dicom_port
        )
        self.http_url = f"http://{HOST}:{self.http_port}"
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(self._config(overrides), indent=2))
        self.log_path = workdir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def _config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": "bonescan-tests",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "DicomAet": ORTHANC_AE_TITLE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            # No authentication, reachable from the test process (only 127.0.0.1 is used).
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            # Any calling AE may echo, store and find; any called AE title is accepted.
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            # Segmentation Storage and Comprehensive 3D SR are in DCMTK's storage list; this
            # also accepts storage SOP classes DCMTK 3.6.7 does not know.
            "UnknownSopClassAccepted": True,
            "StorageCompression": False,
            "SaveJobs": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                # FACTS.md: with "MainDicomTags" OHIF renders nothing.
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        config.update(overrides)
        return config

    # -- process ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start Orthanc and wait until REST ``/system`` answers and the DICOM port listens."""
        if self.running:
            return
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [ORTHANC, str(self.config_path)],
                cwd=self.workdir,
                env=_dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (single-threaded at this point)
            )
        _wait_ready(
            lambda: self._system_answers() and port_open(self.dicom_port),
            self._process,
            "Orthanc",
            self.log_path,
        )
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Kill Orthanc (like a crash); storage and ports stay for :meth:`start`."""
        _kill(self._process)
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _system_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/system", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    # -- REST ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"{self.http_url}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def get_json(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance, expanded (``ID``, ``MainDicomTags``, ``ParentSeries``, …)."""
        return list(self.get_json("/instances?expand"))

    def find_sop(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or ``None``."""
        found = json.loads(self._request("POST", "/tools/lookup", sop_instance_uid.encode()))
        ids = [item["ID"] for item in found if item.get("Type") == "Instance"]
        return ids[0] if ids else None

    def download(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file of this instance (fails the test if it is not there)."""
        orthanc_id = self.find_sop(sop_instance_uid)
        if orthanc_id is None:
            pytest.fail(f"Orthanc does not hold SOP instance {sop_instance_uid}")
        return self._request("GET", f"/instances/{orthanc_id}/file")

    def clear(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient in self.get_json("/patients"):
            self._request("DELETE", f"/patients/{patient}")


@dataclass
class StoreScp:
    """A dcmtk storescp process (single process, no ``--fork``) and where it writes."""

    destination: Destination
    output_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def files(self) -> list[Path]:
        return sorted(path for path in self.output_dir.iterdir() if path.is_file())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# A profile for storescp -xf: Verification and NM Image Storage, uncompressed; nothing else, so
# Segmentation Storage (and every other SOP class) is refused at association negotiation.
NO_SEGMENTATION_PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[NuclearMedicineOnly]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = NuclearMedicineImageStorage\\Uncompressed

[[Profiles]]
[NuclearMedicineOnly]
PresentationContexts = NuclearMedicineOnly
"""

StartStoreScp = Callable[..., StoreScp]


@pytest.fixture
def start_storescp(tmp_path: Path) -> Iterator[StartStoreScp]:
    """Start dcmtk storescp with extra options (e.g. ``"-xf", cfg, profile``); killed afterwards."""
    _require(STORESCP, "dcmtk")
    started: list[StoreScp] = []

    def start(*options: str, name: str = "storescp") -> StoreScp:
        port, output = free_port(), tmp_path / f"{name}-{len(started)}"
        output.mkdir()
        log_path = tmp_path / f"{output.name}.log"
        with log_path.open("wb") as log:
            command = [STORESCP, "-v", "-aet", STORESCP_AE_TITLE, "-od", str(output), *options]
            process = subprocess.Popen(
                [*command, str(port)],
                env=_dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        scp = StoreScp(
            Destination(name=name, ae_title=STORESCP_AE_TITLE, host=HOST, port=port),
            output,
            process,
            log_path,
        )
        started.append(scp)
        _wait_ready(lambda: port_open(port), process, "storescp", log_path)
        return scp

    yield start
    for scp in started:
        _kill(scp.process)


@pytest.fixture
def storescp(start_storescp: StartStoreScp) -> StoreScp:
    """storescp accepting every storage SOP class (``--promiscuous``: unknown ones too) in any
    transfer syntax it knows, writing each instance to ``output_dir``. No Query/Retrieve."""
    return start_storescp("--promiscuous", "+xa")


@pytest.fixture
def storescp_without_seg(start_storescp: StartStoreScp, tmp_path: Path) -> Destination:
    """storescp accepting Verification and NM Image Storage only: no Segmentation Storage."""
    profile = tmp_path / "storescp-nm-only.cfg"
    profile.write_text(NO_SEGMENTATION_PROFILE)
    scp = start_storescp("-xf", str(profile), "NuclearMedicineOnly", name="storescp-nm-only")
    return scp.destination


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """One Orthanc for the whole session (see :func:`orthanc`)."""
    pacs = OrthancPacs(tmp_path_factory.mktemp("orthanc"))
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture
def orthanc(orthanc_server: OrthancPacs) -> OrthancPacs:
    """The session's Orthanc, running and empty (restarted if a test left it stopped)."""
    orthanc_server.start()
    orthanc_server.clear()
    return orthanc_server


StartOrthanc = Callable[..., OrthancPacs]


@pytest.fixture
def start_orthanc(tmp_path: Path) -> Iterator[StartOrthanc]:
    """Start a separate Orthanc with configuration overrides (``DicomCheckCalledAet=True``…)."""
    started: list[OrthancPacs] = []

    def start(**overrides: Any) -> OrthancPacs:
        pacs = OrthancPacs(tmp_path / f"orthanc-{len(started)}", **overrides)
        started.append(pacs)
        pacs.start()
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


# dcmqrscp's own configuration format (dcmqrcnf.txt): one storage area for AE title QRSCP.
DCMQRSCP_CONFIG = """\
NetworkTCPPort  = {port}
MaxPDUSize      = 16384
MaxAssociations = {max_associations}

HostTable BEGIN
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{ae_title}  {storage}  RW (100, 256mb)  ANY
AETable END
"""


@pytest.fixture
def dcmqrscp_one_association(tmp_path: Path) -> Iterator[Destination]:
    """dcmtk's image archive (C-STORE and C-FIND) taking one association at a time: while one is
    open (or its child process not yet reaped), the next is rejected transient, "local limit
    exceeded" (result 0x02, source 0x03, reason 0x02)."""
    _require(DCMQRSCP, "dcmtk")
    port, storage = free_port(), tmp_path / "dcmqrscp"
    storage.mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        DCMQRSCP_CONFIG.format(
            port=port, max_associations=1, ae_title=DCMQRSCP_AE_TITLE, storage=storage
        )
    )
    log_path = tmp_path / "dcmqrscp.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [DCMQRSCP, "-v", "-c", str(config)],  # forks one child per association (default)
            env=_dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    try:
        _wait_ready(lambda: port_open(port), process, "dcmqrscp", log_path)
        yield Destination(name="dcmqrscp", ae_title=DCMQRSCP_AE_TITLE, host=HOST, port=port)
    finally:
        _kill(process)
