"""The production C-STORE listener: AE set-up, serve, and a graceful stop on SIGTERM.

One process: the acceptor of :mod:`listeners.scp` (one thread per association, contexts
negotiated by pynetdicom against the AE built here) answers C-ECHO and C-STORE; the sweeper
thread opens and enqueues jobs and marks them queued; an optional HTTP thread serves Prometheus
metrics. With a broker, a child process (:mod:`listeners.sender`) sends the tasks of the jobs
that C-STOREs open, away from this process's interpreter lock. With ``listener.processes`` > 1
the associations are served by that many processes instead (:mod:`listeners.workers`), and this
one keeps the sweeper, the sender and the metrics. None imports torch: jobs are enqueued by
task name (DESIGN.md).
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from types import FrameType

from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS, get_decoder
from pydicom.uid import UID
from pynetdicom import AE, _config
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.engine import Engine

from listeners.completeness import SeriesJobs
from listeners.database import ListenerSessions
from listeners.enqueue import Enqueuer
from listeners.handlers import Arrival, RecordWriter, StoreHandlers
from listeners.metrics import ListenerMetrics
from listeners.scp import StoreServer
from listeners.sender import SenderProcess
from listeners.spool import Spool
from listeners.sweeper import Sweeper
from listeners.workers import AssociationProcesses
from pipeline.db.session import make_engine
from pipeline.model_version import current_model_version
from pipeline.settings import ListenerSettings, Settings

logger = logging.getLogger(__name__)

ACSE_TIMEOUT_S = 10.0  # a modality sends its A-ASSOCIATE-RQ right after connecting
DIMSE_TIMEOUT_S = 120.0
NETWORK_TIMEOUT_S = 120.0  # an idle or stuck peer's association is closed after this
UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian first: the preferred one
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)


def quiet_pynetdicom() -> None:
    """No patient identifiers in pynetdicom's logs, and none of its per-message logging."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes, then every compressed one an installed pixel decoder handles."""
    compressed = sorted(
        uid
        for uid in _PIXEL_DATA_DECODERS
        if uid not in UNCOMPRESSED and get_decoder(UID(uid)).is_available
    )
    return [*UNCOMPRESSED, *compressed]


def ssl_context(listener: ListenerSettings) -> ssl.SSLContext | None:
    """A server TLS context from the settings; client certificates required when a CA is set."""
    if listener.tls_certificate is None or listener.tls_private_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.9 BCP 195 profile
    context.load_cert_chain(listener.tls_certificate, listener.tls_private_key)
    if listener.tls_ca_certificate is not None:
        context.load_verify_locations(listener.tls_ca_certificate)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_ae(listener: ListenerSettings) -> AE:
    """The AE: Verification, and every storage SOP class in every decodable transfer syntax.

    NM and Secondary Capture are what bonescan works on; the other storage classes are accepted
    so that a modality's routing never stalls on us, and are stored as skipped.
    """
    ae = AE(ae_title=listener.ae_title)
    ae.maximum_associations = listener.max_associations
    ae.maximum_pdu_size = listener.max_pdu_size
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    # PS3.8 9.3.4: rejected-permanent, calling AE title not recognized (reason 3), and called
    # AE title not recognized (reason 7).
    ae.require_calling_aet = list(listener.allowed_calling_ae_titles)
    ae.require_called_aet = True
    syntaxes = transfer_syntaxes()
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), syntaxes)
    return ae


def listener_engine(settings: Settings) -> Engine:
    """The database engine of a process that files C-STOREs: a connection for each association
    it may serve, and a few for the sweeper and the recovery."""
    pool = {"pool_size": settings.listener.max_associations + 2, "max_overflow": 4}
    return make_engine(settings.database_url, **pool)


class Arrivals:
    """Where the C-STORE handler reports (:class:`~listeners.handlers.ArrivalSink`): a job
    opened by its instance goes to the sender process, or to the sweeper when the sender
    cannot take it; arrivals that may complete a series go to the sweeper."""

    def __init__(self, sweeper: Sweeper, sender: SenderProcess | None) -> None:
        self.sweeper = sweeper
        self.sender = sender

    def notify(self, arrival: Arrival) -> None:
        self.sweeper.notify(arrival)

    def opened(self, job_id: int) -> None:
        if self.sender is None or not self.sender.submit(job_id):
            self.sweeper.opened(job_id)


class Listener:
    """Everything the listener process runs, wired from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        listener = settings.listener
        self.engine = listener_engine(settings)
        self.session_factory = ListenerSessions(self.engine)
        self.spool = Spool(settings.spool_dir, reserve=1)  # one file made ahead (Spool)
        self.metrics = ListenerMetrics()
        self.model_version = current_model_version(settings)
        self.enqueuer = Enqueuer(settings, self.session_factory, self.metrics)
        self.sweeper = Sweeper(
            self.spool,
            self.session_factory,
            SeriesJobs(self.model_version),
            self.enqueuer,
            self.metrics,
            called_ae_title=listener.ae_title,
            quiet_seconds=listener.quiet_seconds,
            visibility_timeout_s=settings.worker.visibility_timeout_seconds,
        )
        self.sender = (
            None if settings.broker_url is None else SenderProcess(settings, self.sweeper.sent)
        )
        self.sweeper.sender = self.sender
        self.writer = RecordWriter(self.session_factory, self.model_version)
        self.handlers = StoreHandlers(
            self.spool,
            self.session_factory,
            Arrivals(self.sweeper, self.sender),
            self.metrics,
            writer=self.writer,
        )
        self.ae = build_ae(listener)
        self.server: StoreServer | None = None
        self.processes: AssociationProcesses | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Clear partial files, bind the port, and start the sweeper (and metrics)."""
        listener = self.settings.listener
        self.spool.root.mkdir(parents=True, exist_ok=True)
        self.spool.remove_partials()  # nothing writes yet: every partial is a crash's leftover
        self.enqueuer.warm_up()  # Celery loads now, not while the first scans are filed
        if self.sender is not None:
            self.sender.start()
        if listener.processes > 1:  # C-STOREs are filed in association processes
            arrivals = Arrivals(self.sweeper, self.sender)
            self.processes = AssociationProcesses(
                self.settings, listener.processes, arrivals, self.metrics
            )
            self.processes.start()
        else:
            address = (listener.host, listener.port)
            tls = ssl_context(listener)
            self.server = StoreServer(self.ae, self.handlers, address, ssl_context=tls)
            self.handlers.associations = self.server.slots.total
            self.server.start()
        self.sweeper.start()
        if listener.metrics_port is not None:
            self.metrics.serve(listener.host, listener.metrics_port)
        logger.info(
            "listening ae_title=%s host=%s port=%d tls=%s processes=%d model_version=%s",
            listener.ae_title,
            listener.host,
            listener.port,
            listener.tls_certificate is not None,
            listener.processes,
            self.model_version,
        )

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Signal handler: ask the main thread to stop (it does the work, not the handler)."""
        self._stop.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop`."""
        while not self._stop.wait(timeout=1.0):
            pass

    def stop(self) -> None:
        """Stop accepting, let running associations finish (bounded), stop the sweeper."""
        grace = self.settings.listener.shutdown_grace_seconds
        aborted = self.server.shutdown(grace) if self.server is not None else 0
        if self.processes is not None:
            aborted += self.processes.stop(grace)
        # running associations went on until they ended or the grace ran out
        logger.info("stopped associations_aborted=%d grace_s=%.0f", aborted, grace)
        if self.sender is not None:
            self.sender.stop()  # what it sent is reported to the sweeper before it stops
        self.sweeper.stop()
        self.sweeper.join(timeout=5)
        self.spool.close()
        self.engine.dispose()


def serve(settings: Settings) -> int:
    """Run the listener until SIGTERM or SIGINT; return the process exit status (0)."""
    quiet_pynetdicom()
    listener = Listener(settings)
    signal.signal(signal.SIGTERM, listener.request_stop)
    signal.signal(signal.SIGINT, listener.request_stop)
    listener.start()
    listener.wait()
    logger.info("stopping")
    listener.stop()
    return 0
