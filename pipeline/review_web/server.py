"""Serve :class:`~pipeline.review_web.app.ReviewApp` with the standard library: wsgiref's WSGI
server with a thread per request (the pages are small; a reviewer or two at a time)."""

from __future__ import annotations

import logging
import signal
from socketserver import ThreadingMixIn
from types import FrameType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pipeline.review_web.app import ReviewApp

logger = logging.getLogger(__name__)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request; threads do not hold up the exit."""

    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    """The application logs each request itself (ids only); wsgiref's stderr line goes."""

    def log_message(self, format: str, *args: object) -> None:
        return


class _StopError(Exception):
    """Raised from the signal handler to leave ``serve_forever``."""


def serve(app: ReviewApp, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or Ctrl-C.

    Raises
    ------
    OSError
        When the address cannot be bound (in use, not ours).
    """
    server = make_server(
        host, port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _StopError(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    logger.info("review_server_listening host=%s port=%d", host, server.server_port)
    try:
        server.serve_forever(poll_interval=0.5)
    except (_StopError, KeyboardInterrupt):
        logger.info("review_server_stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
