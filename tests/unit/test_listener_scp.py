"""The association's socket timeouts: kernel timeouts on a blocking socket (one system call per
receive), reported as the TimeoutError the association aborts on."""

from __future__ import annotations

import socket
import struct
import sys
import time
from typing import Any

import pytest

from listeners.scp import Association


def _association(sock: socket.socket) -> Association:
    server: Any = None  # set_timeout and read_pdu touch only the socket
    return Association(server, sock, ("127.0.0.1", 104))


def test_a_silent_peer_times_out() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        association = _association(ours)
        association.set_timeout(0.3)
        if sys.platform.startswith("linux"):
            assert ours.gettimeout() is None  # blocking: no poll before each receive
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            association.read_pdu(1024)
        assert time.monotonic() - started >= 0.25


def test_a_pdu_that_arrives_in_pieces_is_read_whole() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        association = _association(ours)
        association.set_timeout(5)
        body = bytes(range(200))
        pdu = struct.pack(">BBI", 0x04, 0, len(body)) + body
        theirs.sendall(pdu[:3])
        theirs.sendall(pdu[3:100])
        theirs.sendall(pdu[100:])
        pdu_type, got = association.read_pdu(1024)
        assert (pdu_type, bytes(got)) == (0x04, body)


def test_a_peer_that_hangs_up_is_a_lost_connection() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        association = _association(ours)
        association.set_timeout(5)
        theirs.close()
        with pytest.raises(ConnectionError):
            association.read_pdu(1024)
