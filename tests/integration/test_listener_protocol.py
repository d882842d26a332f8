"""The listener's own upper layer (listeners/scp.py) against pynetdicom and raw sockets as the peer:
negotiation, limits, error comments, unsupported services and broken PDUs."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    NuclearMedicineImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from listeners.handlers import file_meta
from listeners.scp import StoreCommand, decode_command, encode_command
from tests.integration import dicom_factory as factory
from tests.integration.conftest import AE_TITLE, StartListener, echo_refusal, wait_for

pytestmark = pytest.mark.timeout(120)


def _ae(*contexts: str) -> AE:
    ae = AE(ae_title="PROTO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for context in contexts:
        ae.add_requested_context(context, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def test_file_meta_is_what_pydicom_encodes() -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from pynetdicom.dsutils import encode_file_meta

    for calling in ("MODALITY", "AB", ""):
        request = StoreCommand(1, "1.2.840.10008.5.1.4.1.1.20", "1.2.3.44", "1.2.840.10008.1.2")
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = UID(request.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(request.sop_instance_uid)
        meta.TransferSyntaxUID = UID(request.transfer_syntax_uid)
        meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
        if calling:
            meta.SourceApplicationEntityTitle = calling
        assert file_meta(request, calling) == bytes(encode_file_meta(meta))


def test_command_set_round_trips() -> None:
    encoded = encode_command([(0x0100, b"\x01\x80"), (0x0002, b"1.2.3")])
    fields = decode_command(encoded)
    assert fields[0x0002] == b"1.2.3\x00"  # padded to even length
    assert fields[0x0100] == b"\x01\x80"
    assert struct.unpack("<I", fields[0x0000])[0] == len(encoded) - 12


def test_unsupported_service_is_answered_not_dropped(start_listener: StartListener) -> None:
    listener = start_listener()
    ae = _ae(PatientRootQueryRetrieveInformationModelFind, Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    # Query/Retrieve is not offered: its context is rejected, Verification accepted.
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert listener.alive()


def test_failure_status_carries_an_error_comment(
    start_listener: StartListener, tmp_path: Path
) -> None:
    listener = start_listener()
    ae = _ae(NuclearMedicineImageStorage)
    path = factory.save(factory.nm_whole_body(frames=2, rows=64, columns=32), tmp_path / "a.dcm")
    data = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    broken = data[: meta_end + 100]  # the data set cut before its UIDs
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        cut = tmp_path / "cut.dcm"
        cut.write_bytes(broken)
        status = assoc.send_c_store(cut)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assoc.release()
    assert int(status.Status) == 0xC000
    assert status.ErrorComment  # the reason travels with the status


@pytest.mark.parametrize("processes", ["1", "2"])
def test_association_limit_rejects_the_one_too_many(
    start_listener: StartListener, processes: str
) -> None:
    # with 2 association processes, whichever accepts the connection counts the same two slots
    listener = start_listener(LISTENER__MAX_ASSOCIATIONS="2", LISTENER__PROCESSES=processes)
    ae = _ae(Verification)
    held = [ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE) for _ in range(2)]
    assert all(a.is_established for a in held)
    for _ in range(3):
        refusal = echo_refusal(listener.port)
        assert "Rejected Transient" in refusal, listener.log()
        assert "Local Limit Exceeded" in refusal
    wait_for(
        lambda: listener.log().count("reason=local_limit_exceeded") == 3,
        timeout=10,
        what="three local-limit rejections in the log",
    )
    held[0].release()
    wait_for(
        lambda: ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE),
        timeout=10,
        what="a slot after a release",
    ).release()
    held[1].release()


def _associate_raw(port: int) -> socket.socket:
    """A raw socket with an association for Verification (context 1) established."""
    ae = _ae(Verification)
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PROTO"
    primitive.called_ae_title = AE_TITLE
    contexts = ae.requested_contexts
    for index, context in enumerate(contexts):
        context.context_id = 2 * index + 1
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.encode())
    reply = sock.recv(6)
    assert reply[0] == 0x02, reply  # A-ASSOCIATE-AC
    (length_,) = struct.unpack(">I", reply[2:6])
    while length_:
        length_ -= len(sock.recv(length_))
    return sock


@pytest.mark.parametrize(
    ("name", "pdu"),
    [
        ("pdv_on_unknown_context", b"\x04\x00" + struct.pack(">IIBB", 6, 2, 99, 0x03)),
        ("pdv_length_past_pdu", b"\x04\x00" + struct.pack(">IIBB", 6, 400, 1, 0x03)),
        ("data_before_command", b"\x04\x00" + struct.pack(">IIBB", 8, 4, 1, 0x02) + b"ab"),
        ("unknown_pdu_type", b"\x09\x00" + struct.pack(">I", 0)),
        ("second_associate_rq", b"\x01\x00" + struct.pack(">I", 2) + b"\x00\x01"),
        ("garbage_command", b"\x04\x00" + struct.pack(">IIBB", 10, 6, 1, 0x03) + b"\xff" * 4),
    ],
)
def test_broken_pdus_abort_the_association_and_nothing_else(
    start_listener: StartListener, name: str, pdu: bytes
) -> None:
    listener = start_listener()
    sock = _associate_raw(listener.port)
    sock.sendall(pdu)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert answer[:1] == b"\x07", f"{name}: expected an A-ABORT, got {answer[:16]!r}"
    # the listener is unharmed: the next association works
    ae = _ae(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def test_many_parallel_associations_each_get_every_answer(start_listener: StartListener) -> None:
    """dcmtk's echoscu as the modalities (pynetdicom's own SCU loses a response that comes back
    faster than its reactor pauses, when several run in one process)."""
    listener = start_listener()
    command = ["/usr/bin/echoscu", "-aet", "PROTO", "-aec", AE_TITLE, "--repeat", "10"]
    senders = [
        subprocess.Popen(
            [*command, "127.0.0.1", str(listener.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(8)
    ]
    outputs = [sender.communicate(timeout=60)[0].decode() for sender in senders]
    assert [sender.returncode for sender in senders] == [0] * 8, outputs
    assert listener.alive()
