"""DICOM service-class user: C-ECHO, C-STORE and C-FIND read-back against configured peers.

Faults are translated once, here, into what the caller must do (STYLE.md "Errors"):
:class:`~pipeline.errors.RetryableError` when a later attempt can succeed (peer down, timeout,
abort, transient rejection, 0xA7xx out of resources, no response) and
:class:`~pipeline.errors.PermanentError` when it will fail the same way again (permanent
rejection such as an unknown called AE title, SOP class not accepted, 0xA9xx / 0xCxxx /
0x0122 / 0x0124 and other failures, an unreadable file). The read-back after a store raises only
RetryableError: what cannot be checked at a peer is ``None`` plus a logged reason, since the
instance is already delivered. Reasons are one line for an admin:
destination, AE title, address, status in hex; never patient data (the peer's Error Comment is
left out on purpose: some archives quote the Patient ID in it).
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS, STORAGE_SERVICE_CLASS_STATUS

from pipeline.errors import PermanentError, RetryableError
from pipeline.settings import Destination

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
# PS3.4 B.2.3 (Storage warnings) and PS3.7 C.4 (general warnings): the instance is stored.
STORE_WARNINGS = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
PENDING = frozenset({0xFF00, 0xFF01})  # PS3.4 C.4.1.1.4: a match follows
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
REJECTED_TRANSIENT = 0x02  # PS3.8 9.3.4 A-ASSOCIATE-RJ Result (0x01 is rejected-permanent)


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO: ``ok`` and a short human reason."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class StoreResult:
    """A C-STORE the peer answered with success or a warning: the instance is stored.

    ``status`` is the DIMSE status (0x0000, or a warning such as 0xB000, 0xB006, 0xB007);
    ``detail`` is one line for an admin, e.g. ``"stored"`` or
    ``"stored with warning 0xB007 (Data Set Does Not Match SOP Class)"``.
    """

    status: int
    detail: str


def _ae(calling_ae_title: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _peer(destination: Destination) -> str:
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    return f"destination {destination.name} ({where})"


def _status_text(code: int, table: dict[int, tuple[str, str]]) -> str:
    description = table.get(code, ("", ""))[1]
    return f"0x{code:04X} ({description})" if description else f"0x{code:04X}"


def _open(ae: AE, destination: Destination, timeout_s: float) -> Association | None:
    """Associate; ``None`` when the peer accepted the association but none of our contexts.

    Raises
    ------
    RetryableError
        No association (refused connection, unreachable, timeout, abort) or a transient
        rejection.
    PermanentError
        A permanent rejection (e.g. called AE title not recognised).
    """
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if assoc.is_established:
        return assoc
    rejection = _rejection_of(assoc)
    if rejection is not None:
        raise _rejection(destination, rejection)
    # pynetdicom aborts an accepted association that has no accepted presentation context.
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return None
    raise RetryableError(
        f"{_peer(destination)}: no association (connection refused, unreachable, aborted or "
        f"no answer within {timeout_s:g} s)"
    )


def _rejection_of(assoc: Association) -> A_ASSOCIATE | None:
    """The peer's A-ASSOCIATE-RJ, or ``None`` when the association was not rejected.

    pynetdicom's requestor looks at its socket after sending the request; when the peer's
    rejection came back and its transport closed the connection before that look, it reports a
    failed connection (``is_aborted``) and leaves the rejection unread in its queue (~15 % of
    fast rejections here). A permanent rejection read as "no association" would be retried in
    vain, so the queue is read too.
    """
    if assoc.is_rejected:
        return cast(A_ASSOCIATE, assoc.acceptor.primitive)
    try:
        while True:
            item: object = assoc.dul.to_user_queue.get_nowait()
            if isinstance(item, A_ASSOCIATE) and item.result not in (None, 0):
                return item
    except queue.Empty:
        return None


def _rejection(destination: Destination, primitive: Any) -> RetryableError | PermanentError:
    result = int(getattr(primitive, "result", 0) or 0)
    source = int(getattr(primitive, "result_source", 0) or 0)
    diagnostic = int(getattr(primitive, "diagnostic", 0) or 0)
    how = "transient" if result == REJECTED_TRANSIENT else "permanent"
    reason = (
        f"{_peer(destination)} rejected the association ({how}): {primitive.reason_str} "
        f"(result 0x{result:02X}, source 0x{source:02X}, reason 0x{diagnostic:02X})"
    )
    # PS3.8 9.3.4: only "rejected-transient" may succeed when tried again later.
    return RetryableError(reason) if result == REJECTED_TRANSIENT else PermanentError(reason)


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


def echo(destination: Destination, calling_ae_title: str, timeout_s: float = 5.0) -> EchoResult:
    """Send one C-ECHO to ``destination`` from ``calling_ae_title``; never raises on peer errors."""
    ae = _ae(calling_ae_title, timeout_s)
    ae.add_requested_context(Verification)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        if _rejection_of(assoc) is not None:
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


def _read(path: Path) -> tuple[Dataset, UID, UID]:
    """The dataset with its SOP Class UID and transfer syntax, or a PermanentError."""
    try:
        dataset = dcmread(path)
        sop_class = UID(dataset.SOPClassUID)
        transfer_syntax = UID(dataset.file_meta.TransferSyntaxUID)
        dataset.SOPInstanceUID  # noqa: B018  (C-STORE needs it; fail here, not in pynetdicom)
    except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError) as error:
        kind = type(error).__name__
        raise PermanentError(f"cannot read DICOM file {path.name} for C-STORE ({kind})") from None
    return dataset, sop_class, transfer_syntax


def _transfer_syntaxes(transfer_syntax: UID) -> list[str]:
    """The file's transfer syntax; for uncompressed data also the two little-endian ones
    (pynetdicom re-encodes between uncompressed syntaxes; compressed data goes as it is)."""
    if transfer_syntax not in UNCOMPRESSED:
        return [transfer_syntax]
    return list(dict.fromkeys([transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))


def _not_accepted(destination: Destination, sop_class: UID, transfer_syntax: UID) -> PermanentError:
    reason = f"destination {destination.name} does not accept {sop_class.name} ({sop_class})"
    if transfer_syntax not in UNCOMPRESSED:
        reason += f" in {transfer_syntax.name}"
    return PermanentError(reason)


def store(
    destination: Destination, path: Path, *, calling_ae_title: str, timeout_s: float
) -> StoreResult:
    """Send the DICOM file at ``path`` to ``destination`` with one C-STORE on a new association.

    Only the presentation context this file needs is requested: its SOP Class with its own
    transfer syntax, plus Explicit and Implicit VR Little Endian when the file is uncompressed.
    ``timeout_s`` bounds the connection, the association negotiation and each DIMSE message.

    Returns
    -------
    StoreResult
        On success (0x0000) or a warning status: the peer has stored the instance.

    Raises
    ------
    RetryableError
        Peer down, timeout, abort, transient rejection, 0xA7xx or no C-STORE response.
    PermanentError
        Unreadable file, permanent rejection, SOP class (or transfer syntax) not accepted,
        0xA9xx, 0xCxxx, 0x0122, 0x0124 or any other failure status.
    """
    dataset, sop_class, transfer_syntax = _read(path)
    ae = _ae(calling_ae_title, timeout_s)
    ae.add_requested_context(sop_class, _transfer_syntaxes(transfer_syntax))
    assoc = _open(ae, destination, timeout_s)
    if assoc is None:
        raise _not_accepted(destination, sop_class, transfer_syntax)
    try:
        started = time.monotonic()
        try:
            status = assoc.send_c_store(dataset)
        except ValueError as error:  # pynetdicom: no usable context or the dataset cannot encode
            raise PermanentError(
                f"{_peer(destination)}: cannot send {sop_class.name} ({type(error).__name__})"
            ) from None
        code = getattr(status, "Status", None)
        if code is None:
            raise RetryableError(
                f"{_peer(destination)}: no C-STORE response for {sop_class.name} "
                f"({_missing(started, timeout_s)})"
            )
    finally:
        _close(assoc)
    return store_outcome(destination, sop_class, code)


def _missing(started: float, timeout_s: float) -> str:
    # pynetdicom answers both an abort and a DIMSE timeout (which it then aborts) with an
    # empty status; the time taken tells them apart.
    if time.monotonic() - started < timeout_s:
        return "the peer aborted or closed the connection, or answered invalidly"
    return f"no answer within {timeout_s:g} s"


def store_outcome(destination: Destination, sop_class: UID, code: int) -> StoreResult:
    """Translate a C-STORE response status: a :class:`StoreResult` when the instance is stored
    (success or warning), else the error for the caller (0xA7xx retryable, others permanent)."""
    text = _status_text(code, STORAGE_SERVICE_CLASS_STATUS)
    if code == SUCCESS:
        return StoreResult(code, "stored")
    if code in STORE_WARNINGS or code & 0xF000 == 0xB000:
        return StoreResult(code, f"stored with warning {text}")
    reason = f"{_peer(destination)} answered C-STORE of {sop_class.name} with status {text}"
    if code & 0xFF00 == 0xA700:  # PS3.4 B.2.3: out of resources, the sender may retry later
        raise RetryableError(reason)
    raise PermanentError(reason)


def _find_query(study_uid: str, series_uid: str, sop_instance_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.SOPInstanceUID = sop_instance_uid
    return query


def verify_stored(
    destination: Destination,
    *,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    calling_ae_title: str,
    timeout_s: float,
) -> bool | None:
    """Ask ``destination`` whether it holds the instance: Study Root C-FIND at IMAGE level.

    Returns
    -------
    bool or None
        ``True`` if a match with this SOP Instance UID came back, ``False`` if none did, ``None``
        if the read-back cannot be done at this peer: ``destination.verify`` is off, the peer
        does not accept the Study Root C-FIND context, rejects the association permanently, or
        answers a failure other than 0xA7xx (0x0122, 0xA900, 0xCxxx…). The instance was already
        stored, so those only log a warning with the reason instead of failing the export.

    Raises
    ------
    RetryableError
        Peer down, timeout, abort, transient rejection, 0xA7xx or a missing response.
    """
    if not destination.verify:
        return None
    ae = _ae(calling_ae_title, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    try:
        assoc = _open(ae, destination, timeout_s)
    except PermanentError as error:
        logger.warning("read_back_unavailable reason=%s", error)
        return None
    if assoc is None:
        return None
    query = _find_query(study_uid, series_uid, sop_instance_uid)
    found = False
    started = time.monotonic()
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        for status, identifier in responses:
            code = getattr(status, "Status", None)
            if code is None:
                raise RetryableError(
                    f"{_peer(destination)}: no C-FIND response ({_missing(started, timeout_s)})"
                )
            if code in PENDING:
                # Compare: some archives ignore keys they do not index and return the series.
                found |= getattr(identifier, "SOPInstanceUID", None) == sop_instance_uid
                continue
            return _find_outcome(destination, code, found)
    finally:
        _close(assoc)
    raise RetryableError(f"{_peer(destination)}: C-FIND ended without a final status")


def _find_outcome(destination: Destination, code: int, found: bool) -> bool | None:
    if code == SUCCESS:
        return found
    reason = f"{_peer(destination)} answered C-FIND with status "
    reason += _status_text(code, QR_FIND_SERVICE_CLASS_STATUS)
    if code & 0xFF00 == 0xA700:  # PS3.4 C.4.1.1.4: out of resources
        raise RetryableError(reason)
    logger.warning("read_back_unavailable reason=%s", reason)
    return None
