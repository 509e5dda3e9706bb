"""The DICOM storage SCP (pynetdicom): C-ECHO, C-STORE of every storage SOP class, allow-list.

The C-STORE handler takes the dataset bytes exactly as received (no decode/re-encode round
trip) and hands them to :class:`InstanceStore`, which answers only once they are durable.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time
from pynetdicom.transport import ThreadedAssociationServer

from node import metrics
from node.audit import AuditTrail, Participant
from node.audit import messages as audit_messages
from node.config import AllowedCaller, DicomConfig
from node.dimse_status import (
    AssociateRejectProviderReason,
    AssociateRejectReason,
    AssociateRejectResult,
    AssociateRejectSource,
    EchoStatus,
    StoreStatus,
)
from node.errors import (
    ConfigError,
    DatasetDoesNotMatchSOPClassError,
    InvalidDatasetError,
    InvalidIdentifierError,
    OutOfResourcesError,
)
from node.logging_setup import quiet_pynetdicom
from node.receive import latency
from node.receive.tls import ServerTlsContext, TlsAssociationServer, peer_certificate_cn
from node.store.ingest import InstanceStore

log = structlog.get_logger(__name__)

# Stored as received. pynetdicom accepts the first syntax of *this* list that the sender
# proposes, so the order is the policy: lossless compressed first (a sender holding a JPEG-LS file
# then sends it as is instead of decompressing it), then uncompressed, and lossy syntaxes last, so
# that a sender holding uncompressed pixels is never invited to compress them lossily for us.
ACCEPTED_TRANSFER_SYNTAXES = [
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
]


# Idle, half-open or garbage connections are dropped after handshake_timeout_s; they are not counted
# against max_associations, but pynetdicom still gives each a thread: this many at most.
PENDING_CONNECTIONS = 64
# The largest PDU accepted before an association is established: an A-ASSOCIATE-RQ proposing every
# storage SOP class with all its transfer syntaxes is ~40 KB. A 0xFFFFFFFF length is refused at once.
MAX_HANDSHAKE_PDU_BYTES = 1024 * 1024


def _lenient_ui(value: Any) -> tuple[bool, str]:
    """pynetdicom's check of command-set UIDs, made lenient: a bad Affected SOP Instance UID (over 64
    characters...) then reaches the C-STORE handler, which fails that one operation with the reason,
    instead of pynetdicom aborting the whole association."""
    return True, ""


@dataclass
class _Received:
    """What one association stored: {study UID: {SOP class UID: instances}}, and how many were refused."""

    studies: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: int = 0


def _failure(status: StoreStatus, comment: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = comment[:64]  # LO: 64 characters
    return rsp


class StorageSCP:
    def __init__(self, config: DicomConfig, store: InstanceStore, audit: AuditTrail | None = None) -> None:
        quiet_pynetdicom()
        latency.install()
        self.config = config
        self.store = store
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: TlsAssociationServer | None = None
        # Built now: unreadable or mismatched certificate files stop start-up (ConfigError naming the field).
        self.tls = ServerTlsContext(config.tls) if config.tls is not None else None
        self._allowed: dict[str, AllowedCaller] = {c.ae_title: c for c in config.allowed_callers}
        # Slots of max_associations, held only by associations that passed the allow-list.
        self._slots: set[Association] = set()
        self._slots_lock = threading.Lock()
        self.audit = audit or AuditTrail.off()
        # What each established association stored, for its one audit message when it ends (each
        # association's handlers run in its own thread: one key each, no lock needed).
        self._received: dict[Association, _Received] = {}
        pynetdicom_config.VALIDATORS["UI"] = _lenient_ui
        ae = AE(ae_title=config.ae_title)
        ae.maximum_associations = config.max_associations + PENDING_CONNECTIONS
        ae.maximum_pdu_size = config.max_pdu_bytes
        ae.network_timeout = config.network_timeout_s
        ae.dimse_timeout = config.dimse_timeout_s
        # How long a connection may take to send its A-ASSOCIATE-RQ (also bounds the socket reads until
        # then, see _on_connection_open).
        ae.acse_timeout = config.handshake_timeout_s
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None  # every storage context names its SOP class
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self.ae = ae

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_REQUESTED, self._on_association_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        plain = self.config.tls is None or not self.config.tls.disable_plain_port
        if plain:
            self._server = self.ae.start_server(
                (self.config.bind_address, self.config.port), block=False, evt_handlers=handlers
            )
        if self.tls is not None:
            self._tls_server = self._start_tls_server(handlers)
        log.info(
            "scp_listening",
            ae_title=self.config.ae_title,
            port=self.port if plain else None,
            tls_port=self.tls_port,
            client_certificates=None if self.tls is None else self._client_certificate_policy(),
            allowed_callers=sorted(self._allowed),
            accept_any_caller=self.config.accept_any_caller,
        )

    def _start_tls_server(self, handlers: list[Any]) -> TlsAssociationServer:
        """pynetdicom's start_server(block=False), with our server class (the handshake off the accept loop)."""
        assert self.tls is not None
        address = (self.config.bind_address, self.tls.config.port)
        try:
            made = self.ae.make_server(address, evt_handlers=handlers, server_class=TlsAssociationServer)
        except OSError as exc:
            raise ConfigError(f"dicom.tls.port: cannot listen on {address[0]}:{address[1]} ({exc.strerror})") from None
        server = cast(TlsAssociationServer, made)  # make_server is typed as returning its default class
        server.tls = self.tls
        server.handshake_timeout_s = self.config.handshake_timeout_s
        self.ae._servers.append(server)  # as start_server does: AE.shutdown() then stops it too
        threading.Thread(target=server.serve_forever, name="TlsAcceptor", daemon=True).start()
        return server

    def _client_certificate_policy(self) -> str:
        assert self.tls is not None
        if self.tls.config.ca_file is None:
            return "not asked"
        return "required" if self.tls.config.require_client_cert else "verified when presented"

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        if self._tls_server is not None:
            return int(self._tls_server.server_address[1])
        return None if self.config.tls is None else self.config.tls.port

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = None
        self._tls_server = None

    # --- handlers ------------------------------------------------------------------------------
    def _on_connection_open(self, event: evt.Event) -> None:
        assoc = event.assoc
        # pynetdicom leaves Nagle on: every small PDU would wait for a delayed ACK.
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Until the association is established, a stalled or trickling peer is cut off quickly
            # (_on_established restores the network timeout).
            sock.settimeout(self.config.handshake_timeout_s)
        assoc.dul._run_loop_delay = latency.DUL_LOOP_DELAY_S
        if assoc.dul.socket is not None:
            _bound_handshake_reads(assoc)
        _answer_incomplete_requests(assoc)

    def _on_association_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        # requestor.ae_title is only filled in after this event; the request primitive has it now.
        primitive = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling = str(primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        if self.config.accept_any_caller:
            self._take_slot(assoc)
            return
        reason = self._refusal(calling, host, assoc)
        if reason is not None:
            log.warning("association_rejected", calling_ae=calling, peer_host=host, reason=reason)
            self._audit_association(calling, host, reason)
            metrics.associations.labels(outcome="rejected").inc()
            assoc.acse.send_reject(
                AssociateRejectResult.REJECTED_PERMANENT,
                AssociateRejectSource.SERVICE_USER,
                AssociateRejectReason.CALLING_AE_NOT_RECOGNIZED,
            )
            # As pynetdicom does for its own rejections: let the DUL flush the A-ASSOCIATE-RJ
            # before the server closes the socket.
            assoc.kill()
            return
        self._take_slot(assoc)

    def _refusal(self, calling: str, host: str, assoc: Association) -> str | None:
        """Why the allow-list refuses this caller, or None."""
        caller = self._allowed.get(calling)
        if caller is None:
            return "calling AE title not in the allow-list"
        if caller.host is not None and caller.host != host:
            return "calling AE title not allowed from this host"
        if caller.certificate_cn is not None:
            sock = assoc.dul.socket.socket if assoc.dul.socket else None
            if not isinstance(sock, ssl.SSLSocket):
                return "calling AE title is bound to a client certificate: TLS port only"
            presented = peer_certificate_cn(sock)
            if presented is None:
                return "calling AE title is bound to a client certificate: none presented"
            if presented != caller.certificate_cn:
                return f"client certificate CN {presented!r} is not the one bound to this calling AE title"
        return None

    def _take_slot(self, assoc: Association) -> None:
        """One of max_associations for an allowed caller, or A-ASSOCIATE-RJ (transient, local limit)."""
        with self._slots_lock:
            self._slots = {a for a in self._slots if a.is_alive() and not (a.is_released or a.is_aborted)}
            if len(self._slots) < self.config.max_associations:
                self._slots.add(assoc)
                return
        log.warning("association_rejected", peer_host=str(assoc.requestor.address), reason="all slots busy")
        calling = str(cast(A_ASSOCIATE, assoc.requestor.primitive).calling_ae_title).strip()
        self._audit_association(calling, str(assoc.requestor.address), "all slots busy")
        metrics.associations.labels(outcome="rejected").inc()
        assoc.acse.send_reject(
            AssociateRejectResult.REJECTED_TRANSIENT,
            AssociateRejectSource.SERVICE_PROVIDER_PRESENTATION,
            AssociateRejectProviderReason.LOCAL_LIMIT_EXCEEDED,
        )
        assoc.kill()

    def _release_slot(self, assoc: Association) -> None:
        with self._slots_lock:
            self._slots.discard(assoc)

    def _on_established(self, event: evt.Event) -> None:
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.settimeout(self.config.network_timeout_s)
        metrics.associations.labels(outcome="accepted").inc()
        metrics.active_associations.inc()
        calling, host = event.assoc.requestor.ae_title.strip(), str(event.assoc.requestor.address)
        tls = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        log.info(
            "association_established",
            calling_ae=calling,
            peer_host=host,
            tls=tls,
            client_certificate_cn=peer_certificate_cn(sock),
        )
        self._received[event.assoc] = _Received()
        self._audit_association(calling, host, None)

    def _audit_association(self, calling: str, host: str, refused_because: str | None) -> None:
        self.audit.record(
            audit_messages.association(
                self.audit.source,
                self.config.ae_title,
                calling_ae=calling,
                address=host,
                accepted=refused_because is None,
                reason=refused_because,
            )
        )

    def _audit_received(self, assoc: Association) -> None:
        """One audit message per association for what it stored (not one per instance)."""
        received = self._received.pop(assoc, None)
        if received is None or not (received.studies or received.failed):
            return
        sender = Participant(
            assoc.requestor.ae_title.strip(), True, ae_title=assoc.requestor.ae_title.strip(),
            address=str(assoc.requestor.address),
        )  # fmt: skip
        self.audit.record(
            audit_messages.instances_received(
                self.audit.source,
                self.config.ae_title,
                sender=sender,
                studies=received.studies,
                failed=received.failed,
            )
        )

    def _on_released(self, event: evt.Event) -> None:
        # A sender that released its association sees its instances in the index (and so in
        # `ainode status` and the API) from then on.
        self.store.flush(timeout_s=10)
        self._on_closed(event)

    def _on_closed(self, event: evt.Event) -> None:
        self._release_slot(event.assoc)
        self._audit_received(event.assoc)
        if event.assoc.is_established or event.assoc.is_released or event.assoc.is_aborted:
            metrics.active_associations.dec()

    @staticmethod
    def _on_echo(event: evt.Event) -> int:
        return int(EchoStatus.SUCCESS)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        outcome = self._store(event)
        received = self._received.get(event.assoc)
        if received is not None and isinstance(outcome, Dataset):
            received.failed += 1
        return outcome

    def _store(self, event: evt.Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title.strip()
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        bound = log.bind(calling_ae=calling)
        try:
            data = event.encoded_dataset(include_meta=False)
            stored = self.store.store_dimse(
                data,
                str(event.context.transfer_syntax),
                str(request.AffectedSOPClassUID or ""),
                sop_uid,
                calling_ae=calling,
                called_ae=self.config.ae_title,
            )
        except OutOfResourcesError as exc:
            metrics.instances_rejected.labels(source="dimse", reason="out_of_resources").inc()
            status = hex(StoreStatus.OUT_OF_RESOURCES)
            bound.error("store_refused", status=status, reason=str(exc))
            return _failure(StoreStatus.OUT_OF_RESOURCES, "Out of resources: disk below watermark")
        except DatasetDoesNotMatchSOPClassError as exc:
            metrics.instances_rejected.labels(source="dimse", reason="invalid").inc()
            status = hex(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
            bound.warning("store_failed", status=status, reason=str(exc))
            return _failure(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except (InvalidDatasetError, InvalidIdentifierError) as exc:
            metrics.instances_rejected.labels(source="dimse", reason="invalid").inc()
            bound.warning("store_failed", status=hex(StoreStatus.CANNOT_UNDERSTAND), reason=str(exc))
            return _failure(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:  # the association (and the node) must survive anything one dataset does
            metrics.instances_rejected.labels(source="dimse", reason="processing_failure").inc()
            bound.exception("store_processing_failure", status=hex(StoreStatus.PROCESSING_FAILURE))
            return _failure(StoreStatus.PROCESSING_FAILURE, f"Processing failure: {type(exc).__name__}")
        metrics.instances_received.labels(source="dimse", result=stored.result).inc()
        received = self._received.get(event.assoc)
        if received is not None:
            by_class = received.studies.setdefault(stored.study_uid, {})
            by_class[stored.sop_class_uid] = by_class.get(stored.sop_class_uid, 0) + 1
        metrics.bytes_received.labels(source="dimse").inc(stored.size_bytes)
        bound.debug(
            "instance_stored",
            series_uid=stored.series_uid,
            sop_instance_uid=stored.sop_instance_uid,
            result=stored.result,
        )
        return int(StoreStatus.SUCCESS)


def _bound_handshake_reads(assoc: Association) -> None:
    """Refuse a PDU longer than MAX_HANDSHAKE_PDU_BYTES before the association is established (a peer
    announcing 0xFFFFFFFF bytes would otherwise keep the connection reading)."""
    sock = assoc.dul.socket
    assert sock is not None
    recv = sock.recv

    def bounded(nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_HANDSHAKE_PDU_BYTES and not assoc.is_established:
            raise OSError(f"PDU of {nr_bytes} bytes before the association was established")
        return recv(nr_bytes)

    sock.recv = bounded  # type: ignore[method-assign]  # per-connection wrapper of pynetdicom's socket


def _answer_incomplete_requests(assoc: Association) -> None:
    """pynetdicom silently drops a C-STORE-RQ that lacks a required parameter (an empty Affected SOP
    Instance UID...), leaving the sender waiting for its timeout: answer it with a failure instead."""
    serve = assoc._serve_request

    def guarded(msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and msg.MessageID is not None and not msg.is_valid_request:
            missing = [k for k in C_STORE.REQUEST_KEYWORDS if getattr(msg, k) is None]
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo = msg.MessageID
            rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
            rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
            rsp.Status = int(StoreStatus.CANNOT_UNDERSTAND)
            comment = f"C-STORE-RQ without {', '.join(missing)}"[:64]
            rsp.ErrorComment = comment  # type: ignore[assignment]  # pynetdicom types it as None only
            log.warning("store_failed", status=hex(StoreStatus.CANNOT_UNDERSTAND), reason=comment,
                        calling_ae=str(assoc.requestor.ae_title).strip())  # fmt: skip
            metrics.instances_rejected.labels(source="dimse", reason="invalid").inc()
            assoc.dimse.send_msg(rsp, context_id)
            return
        serve(msg, context_id)

    assoc._serve_request = guarded  # type: ignore[method-assign]  # per-association wrapper, see above
