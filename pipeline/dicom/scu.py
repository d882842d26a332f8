"""DICOM service-class user: Verification (C-ECHO) against configured peers."""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pipeline.settings import Destination

SUCCESS = 0x0000


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO: ``ok`` and a short human reason."""

    ok: bool
    detail: str


def echo(destination: Destination, calling_ae_title: str, timeout_s: float = 5.0) -> EchoResult:
    """Send one C-ECHO to ``destination`` from ``calling_ae_title``; never raises on peer errors."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            return EchoResult(False, "association rejected")
        return EchoResult(False, "no association (peer down, wrong host or port, or timeout)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return EchoResult(False, "no C-ECHO response (timeout or abort)")
    if code != SUCCESS:
        return EchoResult(False, f"C-ECHO status 0x{code:04X}")
    return EchoResult(True, "C-ECHO ok")
