"""pynetdicom event handlers: C-ECHO, C-STORE and association bookkeeping.

Handlers always answer with a DICOM status and never raise (pynetdicom manner). A C-STORE is
answered Success only once the instance is in the spool (fsynced) and its row is committed
(DESIGN.md "Nothing is acknowledged before it is durable").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pynetdicom import events
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from listeners.database import Sessions
from listeners.metrics import ListenerMetrics
from listeners.receive import Parsed, UnreadableDatasetError, parse, received_instance
from listeners.spool import Spool, Stored
from pipeline.db import ingest

logger = logging.getLogger(__name__)

# PS3.7 C.4.2.1.4 / PS3.4 B.2.3 statuses of a C-STORE response.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the sender keeps the instance and retries later
DATASET_MISMATCH = 0xA900  # Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Arrival:
    """A bone-scan instance just committed: the sweeper checks whether its series is complete."""

    series_id: int
    sop_instance_uid: str
    view: str | None


class ArrivalSink(Protocol):
    def notify(self, arrival: Arrival) -> None: ...


@dataclass(frozen=True)
class Recorded:
    """The outcome of filing one instance."""

    instance_id: int | None  # None when it was in already (a resend)
    series_id: int


def record(
    session_factory: Sessions,
    parsed: Parsed,
    stored: Stored,
    *,
    calling_ae_title: str,
    called_ae_title: str | None,
    model_version: str,
) -> Recorded:
    """Commit the instance row (and a ``skipped`` job for a series that is not a bone scan).

    A concurrent insert of the same study or series is retried; the same SOP instance already
    in is reported with ``instance_id=None``. Raises ``SQLAlchemyError`` when the database fails.
    """
    row = received_instance(
        parsed, stored, calling_ae_title=calling_ae_title, called_ae_title=called_ae_title
    )
    for attempt in range(3):
        try:
            with session_factory.begin() as session:
                instance = ingest.add_instance(session, row)
                if parsed.classification.reason is not None:
                    ingest.open_skipped_job(
                        session, instance.series, parsed.classification.reason, model_version
                    )
                return Recorded(instance.id, instance.series_id)
        except IntegrityError:
            with session_factory() as session:
                existing = ingest.find_instance(session, parsed.sop_instance_uid)
                if existing is not None:
                    return Recorded(None, existing.series_id)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class StoreHandlers:
    """The SCP's handlers, bound to the spool, the database and the sweeper."""

    def __init__(
        self,
        spool: Spool,
        session_factory: Sessions,
        arrivals: ArrivalSink,
        metrics: ListenerMetrics,
        model_version: str,
    ) -> None:
        self.spool = spool
        self.session_factory = session_factory
        self.arrivals = arrivals
        self.metrics = metrics
        self.model_version = model_version

    def handlers(self) -> list[events.EventHandlerType]:
        """The (event, handler) pairs to bind to the AE."""
        return [
            (events.EVT_C_ECHO, self.handle_echo),
            (events.EVT_C_STORE, self.handle_store),
            (events.EVT_ACCEPTED, self.handle_accepted),
            (events.EVT_REJECTED, self.handle_rejected),
            (events.EVT_ABORTED, self.handle_aborted),
            (events.EVT_CONN_CLOSE, self.handle_connection_closed),
        ]

    def handle_echo(self, event: events.Event) -> int:
        """PS3.4 A.4: Verification answers Success."""
        return SUCCESS

    def handle_accepted(self, event: events.Event) -> None:
        requestor = event.assoc.requestor
        self.metrics.associations.labels("accepted", "").inc()
        logger.info(
            "association_accepted calling=%s address=%s", requestor.ae_title, requestor.address
        )

    def handle_rejected(self, event: events.Event) -> None:
        assoc = event.assoc
        reason = rejection_reason(assoc)
        self.metrics.associations.labels("rejected", reason).inc()
        logger.warning(
            "association_rejected calling=%s called=%s address=%s reason=%s",
            assoc.requestor.ae_title,
            assoc.acceptor.ae_title,
            assoc.requestor.address,
            reason,
        )

    def handle_connection_closed(self, event: events.Event) -> None:
        """A peer that hangs up before its A-ASSOCIATE-RQ frees its slot now, not after the ACSE
        timeout: otherwise a burst of junk connections holds every slot and a modality's next
        association is refused as local-limit-exceeded (seen with the fuzz corpus)."""
        assoc = event.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None and not assoc.is_established:
            # None on the DUL's user queue reads as "no request came" (typed as a PDU queue).
            cast(Any, assoc.dul.to_user_queue).put(None)

    def handle_aborted(self, event: events.Event) -> None:
        logger.warning("association_aborted calling=%s", event.assoc.requestor.ae_title)

    def handle_store(self, event: events.Event) -> int:
        """File one instance: spool it, commit its row, then answer (see the module docstring)."""
        started = time.perf_counter()
        try:
            status = self._store(event)
        except Exception:  # the last guard: a handler answers, it never raises (pynetdicom)
            logger.exception("c_store_failed_unexpectedly")
            status = CANNOT_UNDERSTAND
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        return status

    def _store(self, event: events.Event) -> int:  # noqa: PLR0911 (one answer per outcome)
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID)
        calling = event.assoc.requestor.ae_title
        called = event.assoc.acceptor.ae_title
        meta = event.file_meta
        meta.SourceApplicationEntityTitle = calling
        data = event.encoded_dataset(include_meta=False)
        header = b"\x00" * 128 + b"DICM" + encode_meta(meta)
        try:
            parsed = parse(header + data, str(request.AffectedSOPClassUID))
        except UnreadableDatasetError as error:
            return self._refuse(sop_uid, calling, CANNOT_UNDERSTAND, str(error))
        if parsed.sop_instance_uid != sop_uid:
            return self._refuse(
                sop_uid, calling, DATASET_MISMATCH, "SOP Instance UID differs from the request's"
            )
        try:
            with self.session_factory() as session:
                if ingest.find_instance(session, sop_uid) is not None:
                    return self._duplicate(sop_uid, calling)
            path = self.spool.path_for(
                parsed.study_instance_uid, parsed.series_instance_uid, sop_uid
            )
            stored = self.spool.write(path, header, data)
        except (OSError, SQLAlchemyError) as error:
            return self._out_of_resources(sop_uid, "spool or database", error)
        try:
            recorded = record(
                self.session_factory,
                parsed,
                stored,
                calling_ae_title=calling,
                called_ae_title=called,
                model_version=self.model_version,
            )
        except SQLAlchemyError as error:
            self.spool.remove(stored.path)  # nothing half-written: no file without its row
            return self._out_of_resources(sop_uid, "database", error)
        if recorded.instance_id is None:
            return self._duplicate(sop_uid, calling)
        self._accepted(parsed, stored, calling)
        if parsed.classification.is_work:
            self.arrivals.notify(Arrival(recorded.series_id, sop_uid, parsed.classification.view))
        return SUCCESS

    def _accepted(self, parsed: Parsed, stored: Stored, calling: str) -> None:
        skip = parsed.classification.skip
        self.metrics.instances.labels("stored").inc()
        self.metrics.bytes.inc(stored.size_bytes)
        if skip is not None:
            self.metrics.skipped.labels(skip.value).inc()
        logger.info(
            "instance_stored sop=%s series=%s calling=%s ts=%s bytes=%d frames=%s skipped=%s",
            parsed.sop_instance_uid,
            parsed.series_instance_uid,
            calling,
            parsed.transfer_syntax_uid,
            stored.size_bytes,
            parsed.classification.number_of_frames,
            skip.value if skip else "no",
        )

    def _duplicate(self, sop_uid: str, calling: str) -> int:
        # PS3.4 B.4.1.3: the SCP may treat a resent instance as success; it is recorded once.
        self.metrics.instances.labels("duplicate").inc()
        logger.info("instance_duplicate sop=%s calling=%s", sop_uid, calling)
        return SUCCESS

    def _refuse(self, sop_uid: str, calling: str, status: int, reason: str) -> int:
        self.metrics.instances.labels("refused").inc()
        logger.warning(
            "instance_refused sop=%s calling=%s status=0x%04X reason=%s",
            sop_uid[:64],
            calling,
            status,
            reason,
        )
        return status

    def _out_of_resources(self, sop_uid: str, what: str, error: Exception) -> int:
        # PS3.4 B.2.3: 0xA700 out of resources: the sender keeps the instance and retries.
        self.metrics.instances.labels("out_of_resources").inc()
        logger.error(
            "instance_not_stored sop=%s failed=%s error=%s",
            sop_uid[:64],
            what,
            str(getattr(error, "orig", None) or error).splitlines()[0][:300],
        )
        return OUT_OF_RESOURCES


def encode_meta(meta: Any) -> bytes:
    """The encoded File Meta Information group (PS3.10 7.1) with its group length."""
    return bytes(encode_file_meta(meta))


def rejection_reason(assoc: Any) -> str:
    """Which PS3.8 9.3.4 rejection pynetdicom's acceptor applied (for logs and metrics)."""
    ae = assoc.ae
    allowed = [title.strip() for title in ae.require_calling_aet]
    if allowed and assoc.requestor.ae_title not in allowed:
        return "calling_ae_not_recognized"  # rejected-permanent, reason 3
    if (
        ae.require_called_aet
        and assoc.requestor.primitive is not None
        and (assoc.requestor.primitive.called_ae_title != assoc.acceptor.ae_title.strip())
    ):
        return "called_ae_not_recognized"  # rejected-permanent, reason 7
    if len([a for a in ae.active_associations if a.is_acceptor]) > ae.maximum_associations:
        return "local_limit_exceeded"  # rejected-transient, reason 2
    return "other"
