"""The audit trail: stages hand it messages, one writer thread keeps them and sends them on.

``record`` never blocks and never raises: the message goes into a bounded queue (full: dropped and
counted, ``ainode_audit_messages_dropped_total{reason="queue_full"}``). The writer thread appends each
message to the local file (one RFC 5424 message per line, opened O_APPEND, flushed and fsynced per batch)
and sends it to the collector; a collector that is down costs one connection attempt per
``RECONNECT_INTERVAL_S``, the messages meanwhile are counted as dropped (they are in the file).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from pathlib import Path
from typing import IO

import structlog

from node import metrics
from node.audit.messages import AuditMessage, Source
from node.audit.syslog import TlsTransport, Transport, UdpTransport, format_message
from node.config import AuditConfig

log = structlog.get_logger(__name__)

RECONNECT_INTERVAL_S = 10.0
_STOP = object()


def build_transport(config: AuditConfig) -> Transport | None:
    syslog = config.syslog
    if syslog is None:
        return None
    if syslog.transport == "udp":
        return UdpTransport(syslog.host, syslog.port or 514)
    return TlsTransport(
        syslog.host,
        syslog.port or 6514,
        ca_file=syslog.ca_file,
        server_name=syslog.server_name,
        cert_file=syslog.cert_file,
        key_file=syslog.key_file,
    )


class AuditTrail:
    def __init__(
        self,
        source: Source,
        *,
        file: Path | None,
        transport: Transport | None,
        queue_size: int = 10000,
        ae_title: str = "AINODE",
    ) -> None:
        self.source = source
        self.ae_title = ae_title  # the node's AE title, its ActiveParticipant in DICOM events
        self.file = file
        self.transport = transport
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0  # collector down: no connection attempt before this (monotonic)
        self.enabled = file is not None or transport is not None

    @classmethod
    def from_config(cls, config: AuditConfig, data_dir: Path, ae_title: str) -> AuditTrail:
        if not config.enabled:
            return cls.off()
        file = config.file if config.file.is_absolute() else data_dir / config.file
        source = Source(config.source_id or ae_title, config.enterprise_site_id)
        return cls(source, file=file, transport=build_transport(config), queue_size=config.queue_size,
                   ae_title=ae_title)  # fmt: skip

    @classmethod
    def off(cls) -> AuditTrail:
        """A trail that records nothing (audit.enabled false; stages built without one)."""
        return cls(Source("-"), file=None, transport=None)

    # --- the stages' side --------------------------------------------------------------------------
    def record(self, message: AuditMessage) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            metrics.audit_messages_dropped.labels(reason="queue_full").inc()

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, daemon=True, name="audit")
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write out what is queued (the last messages: application stop), then end the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("audit_stop_queue_full")
        self._thread.join(timeout=timeout_s)
        self._thread = None
        if self.transport is not None:
            self.transport.close()

    # --- the writer thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        out = self._open_file()
        try:
            while True:
                batch = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while len(batch) < 100:
                        batch.append(self._queue.get_nowait())
                stopping = any(item is _STOP for item in batch)
                messages = [item for item in batch if isinstance(item, AuditMessage)]
                lines = [(m, format_message(m.xml)) for m in messages]
                if out is not None:
                    out = self._append(out, [line for _, line in lines])
                for message, line in lines:
                    self._send(message, line)
                if stopping:
                    return
        finally:
            if out is not None:
                out.close()

    def _open_file(self) -> IO[bytes] | None:
        if self.file is None:
            return None
        try:
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            return os.fdopen(fd, "ab")
        except OSError as exc:
            log.error("audit_file_unwritable", path=str(self.file), reason=exc.strerror)
            return None

    def _append(self, out: IO[bytes], lines: list[str]) -> IO[bytes] | None:
        try:
            out.write("".join(line + "\n" for line in lines).encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
            return out
        except OSError as exc:
            log.error("audit_file_write_failed", path=str(self.file), reason=exc.strerror)
            out.close()
            return self._open_file()

    def _send(self, message: AuditMessage, line: str) -> None:
        if self.transport is None:
            return
        if time.monotonic() < self._retry_at:
            metrics.audit_messages_dropped.labels(reason="collector_down").inc()
            return
        try:
            self.transport.send(line)
        except OSError as exc:
            self._retry_at = time.monotonic() + RECONNECT_INTERVAL_S
            metrics.audit_messages_dropped.labels(reason="collector_down").inc()
            log.warning("audit_collector_unreachable", reason=str(exc), retry_in_s=RECONNECT_INTERVAL_S)
            return
        metrics.audit_messages.labels(event=message.event).inc()
