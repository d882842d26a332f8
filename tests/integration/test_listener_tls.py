"""DICOM TLS (PS3.15 B.9): the listener with a test certificate, dcmtk's tools as TLS clients."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration import dicom_factory as factory
from tests.integration.conftest import AE_TITLE, ECHOSCU, StartListener

pytestmark = pytest.mark.timeout(120)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1, made with openssl."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_association_works_with_a_test_certificate(
    start_listener: StartListener, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    listener = start_listener(
        LISTENER__TLS_CERTIFICATE=str(cert), LISTENER__TLS_PRIVATE_KEY=str(key)
    )
    tls = ("+tla", "+cf", str(cert))  # anonymous client, server checked against the test cert
    echo = subprocess.run(
        [ECHOSCU, *tls, "-aec", AE_TITLE, "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, echo.stdout + echo.stderr
    listener.storescu(factory.save(factory.nm_whole_body(), tmp_path / "s.dcm"), extra=tls)
    [instance] = listener.instances()
    assert instance.number_of_frames == 2

    plain = subprocess.run(
        [ECHOSCU, "-aec", AE_TITLE, "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert plain.returncode != 0  # no clear-text DICOM on a TLS port
    assert "tls=True" in listener.log()
