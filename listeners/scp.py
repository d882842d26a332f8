"""The DICOM upper layer of the listener: associations, P-DATA, C-ECHO and C-STORE (PS3.7, PS3.8).

pynetdicom's association server polls: each association runs two threads that wake every
millisecond, and every P-DATA PDU is decoded into objects. On two cores that caps a do-nothing
pynetdicom SCP near 240 files/s over one association and 100 files/s over twenty (bench/ingest.py
history in the README), below what a PACS does while also writing and indexing. This acceptor
keeps pynetdicom for what it does well and rarely — decoding the A-ASSOCIATE-RQ, negotiating
presentation contexts and roles against the AE's supported contexts, encoding the
A-ASSOCIATE-AC — and does the hot path itself: one thread per association that blocks in
``recv_into`` (no polling), reads each PDU into one buffer and collects the data set's fragments
as they are.

What it implements (acceptor side only):

- PS3.8 9.3: A-ASSOCIATE-RQ → AC, or RJ with the standard result/source/reason (calling AE not
  recognized, called AE not recognized, application context not supported, protocol version not
  supported, local limit exceeded); A-RELEASE-RQ → RP; A-ABORT from the peer; A-ABORT
  (provider) for an unexpected or malformed PDU, then the connection is closed.
- ARTIM: the A-ASSOCIATE-RQ must arrive within the ACSE timeout; an established association
  that stays silent for the network timeout is aborted.
- PS3.7 9.3.1/9.3.5: C-STORE-RQ and C-ECHO-RQ on an accepted context; any other request is
  answered 0x0211 (unrecognized operation). Failure statuses carry an Error Comment.
- PDU sizes: a PDU longer than our Maximum Length (or, when that is unlimited, than
  :data:`PDU_CAP`) aborts the association instead of allocating it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import sys
import threading
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

logger = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
VERIFICATION = "1.2.840.10008.1.1"
PDU_CAP = 64 * 1024 * 1024  # the largest PDU read when our Maximum Length is unlimited (0)
ASSOCIATE_RQ_CAP = 1024 * 1024  # an A-ASSOCIATE-RQ is a few kB; more is junk
CLOSE_WAIT_S = 5.0  # how long a requestor gets to close after our A-ASSOCIATE-RJ / A-RELEASE-RP

# PS3.8 9.3.1 PDU types
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

# PS3.8 9.3.4: (result, source, reason) of an A-ASSOCIATE-RJ
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
REJECTION_REASONS = {
    REJECT_CALLING_AE: "calling_ae_not_recognized",
    REJECT_CALLED_AE: "called_ae_not_recognized",
    REJECT_APPLICATION_CONTEXT: "application_context_not_supported",
    REJECT_PROTOCOL_VERSION: "protocol_version_not_supported",
    REJECT_LOCAL_LIMIT: "local_limit_exceeded",
}

# PS3.8 9.3.8: A-ABORT reasons when the service provider (source 2) aborts
ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 0x01, 0x02, 0x06

# PS3.7 E.1 command fields
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
NO_DATA_SET = 0x0101
UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.5.3 (as pynetdicom and dcmtk answer it)
# PS3.7 C.4.2.1.4 / PS3.4 B.2.3 statuses this layer answers itself (the service has more)
SUCCESS, CANNOT_UNDERSTAND = 0x0000, 0xC000


class ProtocolError(Exception):
    """The peer broke PS3.8: the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Peer:
    """One association as the handlers see it."""

    address: str
    port: int
    calling_ae_title: str = ""
    called_ae_title: str = ""


@dataclass(frozen=True)
class StoreCommand:
    """A C-STORE-RQ's command, as soon as it arrived (its data set follows)."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Answer:
    """A DIMSE status, with an Error Comment (PS3.7 C.4.2.1.4) for failures."""

    status: int
    comment: str | None = None


class StoreSink(Protocol):
    """Where one C-STORE's data set goes while it arrives (the service's, per request).

    ``write`` gets each fragment as it arrives, ``finish`` the whole data set exactly as
    received once the last one is in (a view of the association's buffer, valid until
    ``finish`` returns) and answers; ``abandon`` is called instead when the association ends
    first. None of them raises.
    """

    def write(self, fragment: memoryview) -> None: ...

    def finish(self, data: memoryview) -> Answer: ...

    def abandon(self) -> None: ...


class Service(Protocol):
    """What the acceptor asks of the application (the listener's handlers)."""

    def accepted(self, peer: Peer) -> None: ...

    def rejected(self, peer: Peer, reason: str) -> None: ...

    def aborted(self, peer: Peer) -> None: ...

    def begin_store(self, peer: Peer, command: StoreCommand) -> StoreSink: ...


# ---------------------------------------------------------------------------------- commands
def _element(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, elem, len(value)) + value


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """An implicit-VR little-endian command set (PS3.7 6.3.1) with its group length first."""
    body = b"".join(_element(0x0000, elem, value) for elem, value in sorted(elements))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def decode_command(data: bytes) -> dict[int, bytes]:
    """The elements of a command set, ``{element number: value}``; ProtocolError if malformed."""
    out: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise ProtocolError("command set ends inside an element header")
        group, elem, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            raise ProtocolError("command set element outside group 0000 or past its end")
        out[elem] = data[offset : offset + length]
        offset += length
    return out


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _uid(value: str) -> bytes:
    return value.encode("ascii", "replace")


def _text(command: dict[int, bytes], elem: int) -> str:
    return command.get(elem, b"").rstrip(b"\x00 ").decode("ascii", "replace")


def _int(command: dict[int, bytes], elem: int) -> int | None:
    value = command.get(elem)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


# -------------------------------------------------------------------------------- association
class _Reply(NamedTuple):
    context_id: int
    message_id: int
    sop_class: str


@dataclass
class _Message:
    context_id: int
    command: bytearray = field(default_factory=bytearray)
    command_done: bool = False
    fields: dict[int, bytes] = field(default_factory=dict)
    data: _Buffer | None = None  # the data set's fragments, once the first arrives
    sink: StoreSink | None = None  # a C-STORE's, from its command on


class _Buffer:
    """A growable byte buffer that is reused, not reallocated, from one message to the next.

    Allocating a fresh megabyte per PDU or data set costs page faults each time (glibc returns
    large blocks to the kernel when they are freed); on the benchmark's VM that was a tenth of
    the per-file cost. Growth allocates a new block and never resizes one that a view may still
    hold.
    """

    def __init__(self, capacity: int = 64 * 1024) -> None:
        self._block = bytearray(capacity)
        self.size = 0

    def reserve(self, size: int) -> memoryview:
        """A view of ``size`` writable bytes (the previous contents are dropped)."""
        if size > len(self._block):
            self._block = bytearray(max(size, 2 * len(self._block)))
        self.size = size
        return memoryview(self._block)[:size]

    def clear(self) -> None:
        self.size = 0

    def append(self, chunk: memoryview) -> None:
        end = self.size + len(chunk)
        if end > len(self._block):
            grown = bytearray(max(end, 2 * len(self._block)))
            grown[: self.size] = memoryview(self._block)[: self.size]
            self._block = grown
        self._block[self.size : end] = chunk
        self.size = end

    def view(self) -> memoryview:
        return memoryview(self._block)[: self.size]


class Association:
    """One accepted connection, served on its own thread until release, abort or timeout."""

    def __init__(self, server: StoreServer, sock: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.peer = Peer(address=address[0], port=address[1])
        self.contexts: dict[int, PresentationContext] = {}
        self.established = False
        self.holds_slot = False  # of the shared slots, given back when the association ends
        self._header = bytearray(6)
        self._pdu = _Buffer()
        self._data = _Buffer()  # one data set at a time: finish() returns before the next PDU
        self._messages: dict[int, _Message] = {}  # by presentation context, until complete
        self._send_lock = threading.Lock()

    # -- socket I/O
    def set_timeout(self, seconds: float) -> None:
        """Bound every receive and send by ``seconds``.

        On Linux a plain TCP socket stays blocking with the kernel's timeouts (SO_RCVTIMEO,
        SO_SNDTIMEO): each ``recv_into`` is then one system call. Python's own timeout polls
        before every receive — a second system call, and a second release of the interpreter
        lock, per PDU, which other associations' threads pay for in thread switches. TLS keeps
        Python's timeout (its layer reads ahead of what the caller asks).
        """
        if isinstance(self.sock, ssl.SSLSocket) or not sys.platform.startswith("linux"):
            self.sock.settimeout(seconds)
            return
        self.sock.settimeout(None)
        whole = int(seconds)
        micro = max(int((seconds - whole) * 1_000_000), 0 if whole else 1)  # 0, 0 = never
        timeval = struct.pack("ll", whole, micro)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def _recv_exact(self, view: memoryview) -> None:
        while view:
            try:
                got = self.sock.recv_into(view)
            except BlockingIOError:  # SO_RCVTIMEO ran out (EAGAIN)
                raise TimeoutError("nothing received within the timeout") from None
            if not got:
                raise ConnectionError("peer closed the connection")
            view = view[got:]

    def read_pdu(self, cap: int) -> tuple[int, memoryview]:
        """Block for the next PDU: its type and its body (after the 6-byte header)."""
        self._recv_exact(memoryview(self._header))
        pdu_type = self._header[0]
        (length,) = struct.unpack_from(">I", self._header, 2)
        if length > cap:
            raise ProtocolError(f"PDU of {length} bytes exceeds {cap}", ABORT_INVALID_PARAMETER)
        body = self._pdu.reserve(length)  # valid until the next read_pdu
        self._recv_exact(body)
        return pdu_type, body

    def send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except BlockingIOError:  # SO_SNDTIMEO ran out (EAGAIN)
                raise TimeoutError("the peer took nothing within the timeout") from None

    def send_abort(self, source: int, reason: int) -> None:
        with contextlib.suppress(OSError):
            self.send(struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, source, reason))

    def await_close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """PS3.8 9.2 (Sta13): after our A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes
        the connection. Closing first can reset it before the peer has read that last PDU
        (seen: a rejected requestor that reported an abort), so wait, briefly, for its close."""
        with contextlib.suppress(OSError, ValueError):
            self.sock.settimeout(timeout_s)
            while self.sock.recv(4096):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    # -- the association
    def run(self) -> None:
        try:
            self.set_timeout(self.server.acse_timeout)
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.do_handshake()
            if not self.associate():
                return
            self.set_timeout(self.server.network_timeout)
            self.serve()
        except ProtocolError as error:
            logger.warning("association_aborted_protocol reason=%s", error)
            self.send_abort(0x02, error.reason)
            if self.established:
                self.server.service.aborted(self.peer)
        except TimeoutError:
            if self.established:
                logger.warning("association_timed_out calling=%s", self.peer.calling_ae_title)
                self.send_abort(0x02, 0x00)
                self.server.service.aborted(self.peer)
        except (ConnectionError, ssl.SSLError, OSError) as error:
            if self.established:
                logger.warning(
                    "association_connection_lost calling=%s error=%s",
                    self.peer.calling_ae_title,
                    type(error).__name__,
                )
                self.server.service.aborted(self.peer)
        except Exception:  # the thread must end cleanly whatever the peer sent
            logger.exception("association_failed_unexpectedly")
            self.send_abort(0x02, 0x00)
        finally:
            for message in self._messages.values():  # data sets the association left unfinished
                if message.sink is not None:
                    message.sink.abandon()
            self._messages.clear()
            self.close()
            self.server.finished(self)

    def associate(self) -> bool:
        """Read the A-ASSOCIATE-RQ and answer it; True when the association is established."""
        pdu_type, body = self.read_pdu(ASSOCIATE_RQ_CAP)
        if pdu_type != ASSOCIATE_RQ:
            raise ProtocolError(f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ")
        plan = self.server.negotiate(bytes(self._header) + bytes(body))
        self.peer.calling_ae_title = plan.calling_ae_title
        self.peer.called_ae_title = plan.called_ae_title
        rejection = plan.rejection or self.server.admit(self)
        if rejection is not None:
            result, source, reason = rejection
            self.send(struct.pack(">BBIBBBB", ASSOCIATE_RJ, 0, 4, 0, result, source, reason))
            self.server.service.rejected(self.peer, REJECTION_REASONS[rejection])
            self.await_close()
            return False
        self.contexts = plan.contexts
        self.send(plan.accept)
        self.established = True
        self.server.service.accepted(self.peer)
        return True

    def serve(self) -> None:
        """P-DATA until A-RELEASE-RQ (answered) or A-ABORT."""
        messages = self._messages
        cap = self.server.max_pdu or PDU_CAP
        while True:
            pdu_type, body = self.read_pdu(cap)
            if pdu_type == P_DATA_TF:
                self.p_data(body, messages)
            elif pdu_type == RELEASE_RQ:
                self.send(struct.pack(">BBII", RELEASE_RP, 0, 4, 0))
                self.await_close()
                return
            elif pdu_type == ABORT:
                logger.warning("association_aborted_by_peer calling=%s", self.peer.calling_ae_title)
                self.server.service.aborted(self.peer)
                self.established = False
                return
            elif pdu_type in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, RELEASE_RP):
                raise ProtocolError(f"unexpected PDU 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)
            else:
                raise ProtocolError(f"unrecognized PDU 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)

    def p_data(self, body: memoryview, messages: dict[int, _Message]) -> None:
        """Collect the PDVs of one P-DATA-TF; answer each message once it is complete."""
        offset, end = 0, len(body)
        while offset < end:
            if end - offset < 6:
                raise ProtocolError("PDV item header past the end of its PDU")
            (length,) = struct.unpack_from(">I", body, offset)
            if length < 2 or length > end - offset - 4:
                raise ProtocolError("PDV item length outside its PDU")
            context_id, control = body[offset + 4], body[offset + 5]
            fragment = body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            self._pdv(context_id, control, fragment, messages)

    def _pdv(
        self, context_id: int, control: int, fragment: memoryview, messages: dict[int, _Message]
    ) -> None:
        """One PDV: a command or data set fragment (PS3.8 E.2); dispatch a completed message."""
        message = messages.get(context_id)
        if message is None:
            message = messages[context_id] = _Message(context_id)
        if control & 0x01:  # command fragment
            if message.command_done:
                raise ProtocolError("command fragment after the command's last fragment")
            message.command += fragment
            if control & 0x02:
                message.command_done = True
                message.fields = decode_command(bytes(message.command))
                if _int(message.fields, 0x0800) == NO_DATA_SET:
                    del messages[context_id]
                    self.dispatch(message)
                else:
                    message.sink = self._begin_store(message)
            return
        if not message.command_done:  # data set fragment
            raise ProtocolError("data set fragment before its command")
        if message.data is None:
            message.data = self._data_buffer(messages)
        message.data.append(fragment)
        if message.sink is not None:
            message.sink.write(fragment)
        if control & 0x02:
            del messages[context_id]
            self.dispatch(message)

    def _data_buffer(self, messages: dict[int, _Message]) -> _Buffer:
        """The association's data buffer, or a new one for data sets interleaved on two
        presentation contexts (PS3.8 allows it; no sender we know does it)."""
        if any(other.data is self._data for other in messages.values()):
            return _Buffer()
        self._data.clear()
        return self._data

    # -- DIMSE
    def _begin_store(self, message: _Message) -> StoreSink | None:
        """The service's sink for a C-STORE-RQ whose data set follows (None for anything else:
        :meth:`dispatch` answers it once it is complete)."""
        command = message.fields
        context = self.contexts[message.context_id]
        if _int(command, 0x0100) != C_STORE_RQ or str(context.abstract_syntax) == VERIFICATION:
            return None
        store = StoreCommand(
            message_id=_int(command, 0x0110) or 0,
            sop_class_uid=_text(command, 0x0002),
            sop_instance_uid=_text(command, 0x1000),
            transfer_syntax_uid=str(context.transfer_syntax[0]),
        )
        return self.server.service.begin_store(self.peer, store)

    def dispatch(self, message: _Message) -> None:
        command = message.fields
        field_ = _int(command, 0x0100)
        message_id = _int(command, 0x0110) or 0
        sop_class = _text(command, 0x0002)
        reply = _Reply(message.context_id, message_id, sop_class)
        if field_ == C_ECHO_RQ:
            self.respond(reply, C_ECHO_RSP, Answer(SUCCESS))
        elif field_ == C_STORE_RQ:
            sop_instance = _text(command, 0x1000)
            if message.data is None or message.sink is None:
                answer = Answer(CANNOT_UNDERSTAND, "C-STORE without a data set")
            else:
                sink, message.sink = message.sink, None
                answer = sink.finish(message.data.view())
            self.respond(reply, C_STORE_RSP, answer, sop_instance)
        elif field_ == C_CANCEL_RQ:
            return  # nothing of ours runs long enough to cancel
        elif field_ is not None and not field_ & 0x8000:
            logger.warning("dimse_unsupported command=0x%04X", field_)
            answer = Answer(UNRECOGNIZED_OPERATION, "only C-ECHO and C-STORE are served")
            self.respond(reply, field_ | 0x8000, answer)
        else:
            raise ProtocolError("a command set that is not a request")

    def respond(
        self, reply: _Reply, command_field: int, answer: Answer, sop_instance: str | None = None
    ) -> None:
        elements = [
            (0x0002, _uid(reply.sop_class)),
            (0x0100, _us(command_field)),
            (0x0120, _us(reply.message_id)),
            (0x0800, _us(NO_DATA_SET)),
            (0x0900, _us(answer.status)),
        ]
        if sop_instance is not None:
            elements.append((0x1000, _uid(sop_instance)))
        if answer.comment and answer.status != 0:
            elements.append((0x0902, answer.comment[:64].encode("ascii", "replace")))
        command = encode_command(elements)
        pdv = struct.pack(">IBB", len(command) + 2, reply.context_id, 0x03) + command
        self.send(struct.pack(">BBI", P_DATA_TF, 0, len(pdv)) + pdv)


# ------------------------------------------------------------------------------------- server
PLAN_CACHE = 64  # distinct A-ASSOCIATE-RQs remembered (one or a few per sending device)
PLAN_CACHE_RQ_BYTES = 64 * 1024  # larger requests are negotiated every time, not remembered


@dataclass(frozen=True)
class _Plan:
    """The answer to one A-ASSOCIATE-RQ: a rejection, or the accepted contexts and the AC."""

    calling_ae_title: str
    called_ae_title: str
    rejection: tuple[int, int, int] | None
    contexts: dict[int, PresentationContext] = field(default_factory=dict)
    accept: bytes = b""


class Slots(Protocol):
    """Association slots shared by the processes that serve one port (``listeners.workers``)."""

    def take(self, limit: int) -> bool: ...

    def give_back(self) -> None: ...

    def total(self) -> int:
        """How many associations all the servers of the port hold now."""
        ...


class _LocalSlots:
    """The association count of a server that serves its port alone."""

    def __init__(self) -> None:
        self.taken = 0
        self._lock = threading.Lock()

    def take(self, limit: int) -> bool:
        with self._lock:
            if self.taken >= limit:
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.taken = max(0, self.taken - 1)

    def total(self) -> int:
        return self.taken


class StoreServer:
    """Accepts connections on a bound socket; one :class:`Association` thread per connection.

    ``ae`` supplies the AE title, the allowed calling AE titles, the supported presentation
    contexts, the maximum number of associations and our Maximum Length (PDU size).
    ``sock`` is a listening socket to accept on (bound by a parent process that shares it
    between several servers, each taking its associations' slots from the shared ``slots``);
    without one the server binds ``address`` itself and counts its own associations.
    """

    def __init__(
        self,
        ae: AE,
        service: Service,
        address: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.ae = ae
        self.service = service
        self.ssl_context = ssl_context
        self.acse_timeout = float(ae.acse_timeout or 30)
        self.network_timeout = float(ae.network_timeout or 60)
        self.max_pdu = int(ae.maximum_pdu_size or 0)
        self.ae_title = str(ae.ae_title).strip()
        self.allowed_calling = [str(t).strip() for t in ae.require_calling_aet]
        self.max_associations = int(ae.maximum_associations)
        # connections that have not (yet) associated are bounded too, by the ACSE timeout and
        # by this count, so junk cannot exhaust threads
        self.max_connections = 4 * self.max_associations + 16
        self.supported = list(ae.supported_contexts)
        self._lock = threading.Lock()
        self._plans: dict[bytes, _Plan] = {}
        self._planning: dict[bytes, threading.Event] = {}  # requests being negotiated now
        self._active: set[Association] = set()
        self._idle = threading.Condition(self._lock)
        self._closing = threading.Event()
        self.slots: Slots = slots or _LocalSlots()
        self.sock = sock or socket.create_server(address, backlog=128, reuse_port=False)
        self.sock.settimeout(0.5)
        self.address = self.sock.getsockname()
        self._thread = threading.Thread(target=self._accept_loop, name="scp-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, address = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                logger.exception("accept_failed")
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            if self.ssl_context is not None:
                try:
                    conn = self.ssl_context.wrap_socket(
                        conn, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            association = Association(self, conn, address[:2])
            with self._lock:
                if len(self._active) >= self.max_connections:  # junk holding sockets open
                    conn.close()
                    continue
                self._active.add(association)
            threading.Thread(
                target=association.run, name=f"assoc-{address[1]}", daemon=True
            ).start()

    def finished(self, association: Association) -> None:
        with self._lock:
            self._active.discard(association)
            self._idle.notify_all()
            holds_slot, association.holds_slot = association.holds_slot, False
        if holds_slot:
            self.slots.give_back()

    def negotiate(self, raw: bytes) -> _Plan:
        """What to answer an A-ASSOCIATE-RQ: the same request bytes get the same answer, so the
        plan is cached (a modality sends the same request every time, and decoding and
        negotiating a hundred presentation contexts costs tens of milliseconds of Python)."""
        if len(raw) > PLAN_CACHE_RQ_BYTES:
            return self._plan(raw)
        with self._lock:
            plan = self._plans.get(raw)
            if plan is not None:
                return plan
            # one negotiation per distinct request: a modality that opens twenty associations
            # at once waits for the first's plan instead of negotiating twenty times
            pending = self._planning.get(raw)
            first = pending is None
            if first:
                pending = self._planning[raw] = threading.Event()
        assert pending is not None
        if not first:
            pending.wait(self.acse_timeout)
            with self._lock:
                plan = self._plans.get(raw)
            return plan if plan is not None else self._plan(raw)
        try:
            plan = self._plan(raw)
            with self._lock:
                if len(self._plans) >= PLAN_CACHE:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[raw] = plan
            return plan
        finally:
            with self._lock:
                del self._planning[raw]
            pending.set()

    def _plan(self, raw: bytes) -> _Plan:
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(raw)
            request = rq.to_primitive()
        except Exception as error:  # pynetdicom raises what the bytes lead it to
            raise ProtocolError(f"A-ASSOCIATE-RQ not decodable: {type(error).__name__}") from None
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        rejection = None
        if not rq.protocol_version & 0x0001:
            rejection = REJECT_PROTOCOL_VERSION
        elif str(request.application_context_name) != APPLICATION_CONTEXT:
            rejection = REJECT_APPLICATION_CONTEXT
        elif self.allowed_calling and calling not in self.allowed_calling:
            rejection = REJECT_CALLING_AE
        elif called != self.ae_title:
            rejection = REJECT_CALLED_AE
        if rejection is not None:
            return _Plan(calling, called, rejection)
        contexts, accept = self._accept(request)
        return _Plan(calling, called, None, contexts, accept)

    def admit(self, association: Association) -> tuple[int, int, int] | None:
        """Take an association slot, or the local-limit rejection when none is free."""
        with self._lock:
            if self._closing.is_set() or not self.slots.take(self.max_associations):
                return REJECT_LOCAL_LIMIT
            association.holds_slot = True  # until the association ends (finished)
        return None

    def _accept(self, request: A_ASSOCIATE) -> tuple[dict[int, PresentationContext], bytes]:
        """Negotiate contexts and roles: the accepted contexts and the encoded A-ASSOCIATE-AC."""
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
        }
        results, role_items = negotiate_as_acceptor(
            request.presentation_context_definition_list, self.supported, roles
        )
        contexts = {int(cx.context_id): cx for cx in results if cx.result == 0 and cx.context_id}
        ac = A_ASSOCIATE()
        ac.application_context_name = UID(APPLICATION_CONTEXT)
        ac.calling_ae_title = request.calling_ae_title
        ac.called_ae_title = request.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = UID(self.ae.implementation_class_uid)
        items: list[object] = [max_length, implementation]
        if self.ae.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = self.ae.implementation_version_name
            items.append(version)
        items.extend(role_items)
        ac.user_information = items  # type: ignore[assignment]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        return contexts, bytes(pdu.encode())

    def shutdown(self, grace_s: float) -> int:
        """Stop accepting; wait up to ``grace_s`` for running associations; abort the rest.

        Returns how many associations were aborted.
        """
        self._closing.set()
        self.sock.close()
        self._thread.join(timeout=5)
        with self._lock:
            self._idle.wait_for(lambda: not self._active, timeout=grace_s)
            left = list(self._active)
        for association in left:
            association.send_abort(0x02, 0x00)
            association.close()
        return len(left)
