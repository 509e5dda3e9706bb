"""DIMSE destination: C-STORE SCU with pynetdicom, C-ECHO for health.

The association proposes exactly the (SOP class, transfer syntax) pairs of the files being sent, one
presentation context per pair, so every file has a context that fits it without conversion.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import structlog
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time

from node.config.destinations import DimseDestinationConfig
from node.dimse_status import (
    AssociateRejectReason,
    AssociateRejectResult,
    AssociateRejectSource,
    EchoStatus,
)
from node.errors import DeliveryError
from node.export.destinations import DeliveryReport, FileOutcome
from node.export.failures import Outcome, classify_store_status, diagnose_tcp_connect, timed_out

# Identifiers of C-FIND/C-MOVE/N-* can carry patient data; pynetdicom must never log them.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
MAX_PRESENTATION_CONTEXTS = 128


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class_uid: UID
    sop_instance_uid: str
    transfer_syntax: UID


@dataclass
class _AssociationEvents:
    """What the ACSE layer told us, captured through pynetdicom's event handlers."""

    connected: bool = False
    association_response: A_ASSOCIATE | None = None
    abort: A_ABORT | A_P_ABORT | None = None

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ACSE_RECV, self._on_acse)]

    def _on_open(self, event: evt.Event) -> None:
        self.connected = True
        # Nagle + delayed ACK stall every C-STORE on loopback and LANs (REAL-PEERS.md: 15.5 s vs 0.48 s
        # for 300 slices); pynetdicom does not disable it.
        raw = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_acse(self, event: evt.Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]  # set by pynetdicom for EVT_ACSE_RECV
        if isinstance(primitive, A_ASSOCIATE):
            self.association_response = primitive
        elif isinstance(primitive, A_ABORT | A_P_ABORT):
            self.abort = primitive


@dataclass
class _AssociationRun:
    outcomes: list[FileOutcome] = field(default_factory=list)
    remaining: list[_File] = field(default_factory=list)
    # The peer application aborted instead of answering the first C-STORE of the association.
    refused_by_abort: bool = False


def _probe(path: Path) -> _File | FileOutcome:
    """SOP class, instance and transfer syntax of a Part-10 file, or a permanent failure outcome."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as exc:
        return FileOutcome.failure(path, None, f"not a readable DICOM file: {exc}", permanent=True)
    ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not ts or not sop_class or not sop_instance:
        return FileOutcome.failure(
            path,
            str(sop_instance) if sop_instance else None,
            "not a DICOM Part-10 file with SOP Class UID, SOP Instance UID and Transfer Syntax UID",
            permanent=True,
        )
    return _File(path, UID(str(sop_class)), str(sop_instance), UID(str(ts)))


def _describe_context(sop_class: UID, ts: UID) -> str:
    return f"{sop_class.name} ({sop_class}) in {ts.name}"


class DimseDestination:
    def __init__(self, name: str, config: DimseDestinationConfig) -> None:
        self.name = name
        self.config = config
        self._log = structlog.get_logger(__name__).bind(
            destination=name, peer_ae=config.ae_title, peer=f"{config.host}:{config.port}"
        )

    @property
    def _peer(self) -> str:
        return f"AE {self.config.ae_title!r} at {self.config.host}:{self.config.port}"

    # --- association handling ------------------------------------------------------------------
    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.config.calling_ae_title)
        timeout = self.config.timeout_s
        ae.connection_timeout = timeout
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.maximum_pdu_size = self.config.max_pdu_length
        return ae

    @contextmanager
    def _associate(self, contexts: Sequence[tuple[UID, UID]]) -> Iterator[tuple[Association, _AssociationEvents]]:
        """An established association or a classified ``DeliveryError``."""
        ae = self._application_entity()
        for sop_class, ts in contexts:
            ae.add_requested_context(sop_class, [ts])
        events = _AssociationEvents()
        tls_args = None
        if self.config.tls is not None:
            tls_args = (self.config.tls.ssl_context(), self.config.tls.server_hostname or self.config.host)
        started = time.monotonic()
        assoc = ae.associate(
            self.config.host,
            self.config.port,
            ae_title=self.config.ae_title,
            evt_handlers=events.handlers(),
            tls_args=tls_args,
        )
        try:
            if not assoc.is_established:
                raise self._association_failure(assoc, events, contexts, time.monotonic() - started)
            yield assoc, events
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _association_failure(
        self,
        assoc: Association,
        events: _AssociationEvents,
        contexts: Sequence[tuple[UID, UID]],
        elapsed_s: float,
    ) -> DeliveryError:
        rsp = events.association_response
        if self.config.tls is not None and not assoc.is_rejected:
            # pynetdicom reports a failed TLS handshake like a refused connection, and a peer that
            # refuses our client certificate (TLS 1.3) like an abort. A handshake of our own tells.
            tls_error = self._tls_diagnosis()
            if tls_error is not None:
                return tls_error
        if not events.connected:
            return DeliveryError(
                f"cannot connect to {self._peer}: {self._connect_failure(elapsed_s)}; will retry", permanent=False
            )
        if assoc.is_rejected and rsp is not None:
            transient = rsp.result == AssociateRejectResult.REJECTED_TRANSIENT or (
                rsp.result_source == AssociateRejectSource.SERVICE_PROVIDER_PRESENTATION
            )
            hint = ""
            if rsp.result_source == AssociateRejectSource.SERVICE_USER and rsp.diagnostic == (
                AssociateRejectReason.CALLING_AE_NOT_RECOGNIZED
            ):
                hint = f": add calling AE {self.config.calling_ae_title!r} to the peer's known modalities"
            elif rsp.result_source == AssociateRejectSource.SERVICE_USER and rsp.diagnostic == (
                AssociateRejectReason.CALLED_AE_NOT_RECOGNIZED
            ):
                hint = f": the peer's AE title is not {self.config.ae_title!r}; fix ae_title"
            return DeliveryError(
                f"association rejected by {self._peer} ({rsp.result_str}, source: {rsp.source_str}, "
                f"reason: {rsp.reason_str}){hint}" + ("; will retry" if transient else ""),
                permanent=not transient,
            )
        if rsp is not None and rsp.result == 0 and not assoc.accepted_contexts:
            proposed = "; ".join(_describe_context(s, t) for s, t in contexts)
            return DeliveryError(
                f"{self._peer} accepts none of the proposed presentation contexts ({proposed}): "
                "the peer does not support these SOP classes / transfer syntaxes",
                permanent=True,
            )
        return DeliveryError(f"association with {self._peer} aborted during negotiation; will retry", permanent=False)

    def _connect_failure(self, elapsed_s: float) -> str:
        """What happened to a TCP connection that pynetdicom could not open, in ``elapsed_s``."""
        timeout = self.config.timeout_s
        if elapsed_s >= 0.9 * timeout:
            return timed_out(timeout)
        # It failed at once; one quick connection of our own tells refused from unreachable.
        reason = diagnose_tcp_connect(self.config.host, self.config.port, min(timeout, 2.0))
        return reason or f"connection failed after {elapsed_s:.1f} s (the port answers now: peer restarting?)"

    def _tls_diagnosis(self) -> DeliveryError | None:
        """A permanent error if a TLS handshake with the peer fails on certificates; None otherwise."""
        tls = self.config.tls
        if tls is None:
            return None
        try:
            raw = socket.create_connection((self.config.host, self.config.port), timeout=self.config.timeout_s)
        except OSError:
            return None  # TCP itself fails: the transient "cannot connect" stands
        try:
            with tls.ssl_context().wrap_socket(raw, server_hostname=tls.server_hostname or self.config.host) as conn:
                # A server that refuses our certificate says so just after the handshake (TLS 1.3).
                conn.settimeout(min(self.config.timeout_s, 2.0))
                conn.recv(1)
        except ssl.SSLError as exc:
            return DeliveryError(
                f"TLS with {self._peer} failed ({exc.reason or exc}): check tls.ca_file, tls.cert_file/key_file "
                "and that the peer expects TLS",
                permanent=True,
            )
        except OSError:
            return None  # timeout or closed connection: the handshake itself was fine
        finally:
            raw.close()
        return None

    # --- public API ----------------------------------------------------------------------------
    def ping(self) -> None:
        with self._associate([(Verification, ImplicitVRLittleEndian)]) as (assoc, _events):
            status = assoc.send_c_echo()
            code = status.get("Status") if status else None
            if code is None:
                raise DeliveryError(f"no C-ECHO response from {self._peer}; will retry", permanent=False)
            if code != EchoStatus.SUCCESS:
                raise DeliveryError(f"C-ECHO to {self._peer} answered 0x{code:04X}", permanent=True)

    def send(self, paths: Sequence[Path]) -> DeliveryReport:
        outcomes: list[FileOutcome] = []
        files: list[_File] = []
        for path in paths:
            probed = _probe(Path(path))
            if isinstance(probed, FileOutcome):
                outcomes.append(probed)
            else:
                files.append(probed)
        # Normally one association; more only when the files span more than 128 context pairs.
        for chunk in _chunk_by_contexts(files):
            waiting = next((o for o in outcomes if not o.delivered and o.permanent is False), None)
            if waiting is not None:
                outcomes.extend(_not_attempted(chunk, waiting.path.name))
                continue
            outcomes.extend(self._send_chunk(chunk, nothing_delivered_yet=not any(o.delivered for o in outcomes)))
        # Report in the caller's order (unreadable files were set aside before sending).
        position = {Path(p): i for i, p in reversed(list(enumerate(paths)))}
        outcomes.sort(key=lambda o: position.get(o.path, len(position)))
        report = DeliveryReport(self.name, tuple(outcomes))
        self._log.info(
            "dimse_send_done",
            files=len(report.outcomes),
            delivered=len(report.delivered),
            failed=len(report.failed),
        )
        return report

    def _send_chunk(self, files: list[_File], *, nothing_delivered_yet: bool) -> list[FileOutcome]:
        contexts = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
        outcomes: list[FileOutcome] = []
        pending = files
        # A peer that refuses our C-STORE by aborting (Orthanc does this for a calling AE it does not
        # know) looks like a network abort. One fresh association tells them apart: a deliberate
        # refusal repeats at the first C-STORE, a glitch does not (and a peer that went down answers
        # the reconnect with "connection refused", which stays transient).
        confirmations_left = 1
        while pending:
            try:
                with self._associate(contexts) as (assoc, events):
                    run = self._store_all(assoc, events, pending)
            except DeliveryError as exc:
                if nothing_delivered_yet and not outcomes:
                    raise
                outcomes.extend(_fail_all(pending, str(exc), permanent=exc.permanent))
                return outcomes
            outcomes.extend(run.outcomes)
            pending = run.remaining
            if not run.refused_by_abort:
                continue
            if confirmations_left > 0:
                confirmations_left -= 1
                self._log.warning("dimse_abort_on_first_store_retrying_once")
                continue
            reason = (
                f"{self._peer} aborted the association instead of answering the first C-STORE, twice in a "
                f"row: it refuses to store from calling AE {self.config.calling_ae_title!r} "
                "(add it to the peer's known modalities / allowed AEs)"
            )
            if nothing_delivered_yet and not outcomes:
                raise DeliveryError(reason, permanent=True)
            outcomes.extend(_fail_all(pending, reason, permanent=True))
            return outcomes
        return outcomes

    def _store_all(self, assoc: Association, events: _AssociationEvents, files: list[_File]) -> _AssociationRun:
        run = _AssociationRun()
        answered = 0
        for index, f in enumerate(files):
            try:
                status = assoc.send_c_store(f.path)
            except ValueError:
                # pynetdicom raises ValueError when no accepted context fits this file.
                run.outcomes.append(
                    FileOutcome.failure(
                        f.path,
                        f.sop_instance_uid,
                        f"{self._peer} did not accept {_describe_context(f.sop_class_uid, f.transfer_syntax)}",
                        permanent=True,
                    )
                )
                continue
            code = status.get("Status") if status else None
            if code is None:
                abort = _abort_received(assoc, events)
                if abort is not None and answered == 0:
                    # Either an A-ABORT or, when the peer closes the socket with our unread C-STORE
                    # data in its buffer (TCP RST), an A-P-ABORT: both are how Orthanc refuses.
                    run.refused_by_abort = True
                    run.remaining = files[index:]
                    return run
                what = "aborted the association" if abort is not None else "did not answer in time"
                run.outcomes.extend(
                    _fail_all(files[index:], f"{self._peer} {what} during C-STORE; will retry", permanent=False)
                )
                return run
            answered += 1
            verdict = classify_store_status(int(code))
            if verdict.outcome is Outcome.DELIVERED:
                run.outcomes.append(FileOutcome.success(f.path, f.sop_instance_uid, verdict.explanation))
                continue
            run.outcomes.append(
                FileOutcome.failure(
                    f.path,
                    f.sop_instance_uid,
                    f"{verdict.explanation} [{self._peer}]",
                    permanent=verdict.outcome is Outcome.PERMANENT,
                )
            )
            self._log.warning("dimse_store_failed", sop_instance_uid=f.sop_instance_uid, status=f"0x{int(code):04X}")
            if verdict.outcome is Outcome.TRANSIENT:
                # The order of a result set holds at the PACS: nothing after an object that must be retried.
                run.outcomes.extend(_not_attempted(files[index + 1 :], f.path.name))
                return run
        return run


def _abort_received(assoc: Association, events: _AssociationEvents) -> A_ABORT | A_P_ABORT | None:
    """The abort that ended a C-STORE without response, if any.

    It may still wait in the DUL queue (the reactor thread has not consumed it yet) or have been
    consumed already (then our EVT_ACSE_RECV handler has it once the reactor finishes).
    """
    queued = assoc.dul.peek_next_pdu()
    if isinstance(queued, A_ABORT | A_P_ABORT):
        return queued
    assoc.join(timeout=2.0)  # the reactor ends right after an abort; bounded in case it does not
    return events.abort


def _not_attempted(files: Sequence[_File], failed_name: str) -> list[FileOutcome]:
    reason = f"not sent: {failed_name}, before it in the same set, failed and is retried first; will retry"
    return _fail_all(files, reason, permanent=False)


def _fail_all(files: Sequence[_File], reason: str, *, permanent: bool) -> list[FileOutcome]:
    return [FileOutcome.failure(f.path, f.sop_instance_uid, reason, permanent=permanent) for f in files]


def _chunk_by_contexts(files: list[_File]) -> Iterator[list[_File]]:
    """Split files so that no association needs more than 128 presentation contexts."""
    chunk: list[_File] = []
    pairs: set[tuple[UID, UID]] = set()
    for f in files:
        pair = (f.sop_class_uid, f.transfer_syntax)
        if pair not in pairs and len(pairs) == MAX_PRESENTATION_CONTEXTS:
            yield chunk
            chunk, pairs = [], set()
        pairs.add(pair)
        chunk.append(f)
    if chunk:
        yield chunk
