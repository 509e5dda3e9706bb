"""DICOM TLS for the storage SCP (PS3.15 B.1): the server's SSLContext, reloaded when its files change, and a
pynetdicom server class that does each TLS handshake in the connection's own thread.

Reload: before each new connection the certificate, key and CA files are stat()ed; when one changed, a new
SSLContext is built and used for that connection and the next ones (open associations keep theirs). A renewal
tool (certbot, cert-manager, a systemd timer) needs no signal and no restart. A half-written pair (new
certificate, old key) fails to load: the previous context stays in use and the error is logged, and the next
change of the files is tried again.

Why the handshake is moved: pynetdicom wraps each accepted socket in its accept loop, so a peer that connects
and never speaks TLS (a plain DICOM caller, a port scanner) would stall every later connection to the port.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path
from typing import cast

import structlog
from pynetdicom.transport import ThreadedAssociationServer

from node import metrics
from node.config import DicomTlsConfig
from node.errors import ConfigError
from node.tls_server import server_tls_context

log = structlog.get_logger(__name__)

# os.stat() fields that change when a file is replaced or rewritten; None for a file that is missing.
_FileStamp = tuple[int, int, int] | None


def build_server_context(config: DicomTlsConfig) -> ssl.SSLContext:
    """The SSLContext of the TLS port (node/tls_server.py's policy); ``ConfigError`` naming the field when a file
    cannot be used. With ``ca_file``, a client certificate, when presented, must verify; with
    ``require_client_cert`` one is required (no certificate, no handshake)."""
    return server_tls_context(
        "dicom.tls",
        cert_file=config.cert_file,
        key_file=config.key_file,
        ca_file=config.ca_file,
        min_version=config.min_version,
        client_certificates=ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_OPTIONAL,
    )


def _stamp(path: Path | None) -> _FileStamp:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ServerTlsContext:
    """The current SSLContext of the TLS port, rebuilt for new connections when its files change."""

    def __init__(self, config: DicomTlsConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._stamps = self._file_stamps()
        self._context = build_server_context(config)  # bad files at start-up stop the node

    def _file_stamps(self) -> tuple[_FileStamp, ...]:
        return tuple(_stamp(p) for p in (self.config.cert_file, self.config.key_file, self.config.ca_file))

    def current(self) -> ssl.SSLContext:
        stamps = self._file_stamps()
        with self._lock:
            if stamps != self._stamps:
                self._stamps = stamps  # a failed load is retried when the files change again, not per connection
                try:
                    self._context = build_server_context(self.config)
                except ConfigError as exc:
                    log.error("tls_reload_failed", reason=str(exc), kept="the previous certificates")
                else:
                    log.info("tls_certificates_reloaded", cert_file=str(self.config.cert_file))
            return self._context


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake in the connection's thread, under a deadline.

    Built by ``AE.make_server(..., server_class=TlsAssociationServer)``; ``tls`` and ``handshake_timeout_s`` are
    set right after (pynetdicom's make_server takes no extra arguments for its server class).
    """

    tls: ServerTlsContext
    handshake_timeout_s: float

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        return self.socket.accept()  # the plain socket: wrapped in process_request_thread

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        assert isinstance(request, socket.socket)
        host = client_address[0] if isinstance(client_address, tuple) else client_address
        request.settimeout(self.handshake_timeout_s)
        try:
            wrapped = self.tls.current().wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a reset: not a TLS peer we accept
            reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else type(exc).__name__
            log.warning("tls_handshake_failed", peer_host=host, reason=str(reason))
            metrics.associations.labels(outcome="tls_refused").inc()
            self.shutdown_request(request)
            return
        super().process_request_thread(wrapped, client_address)


def peer_certificate_cn(sock: object) -> str | None:
    """The subject common name of the verified client certificate on ``sock``; None without TLS or certificate."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()  # {} or None unless the certificate was presented and verified
    # typeshed types every value of the certificate dict as one union; "subject" is the RDN sequence.
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], (cert or {}).get("subject", ()))
    names = [attribute[1] for rdn in subject for attribute in rdn if attribute[0] == "commonName"]
    return names[0] if names else None
