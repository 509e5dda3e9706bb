"""RFC 5424 syslog framing of audit messages, and the two transports to a collector.

As IHE ATNA (ITI-20) has it: facility authpriv (10), severity notice (5), MSGID ``IHE+RFC-3881``, the
XML as the MSG, UTF-8 with a BOM. UDP (RFC 5426) sends one datagram per message; TLS (RFC 5425) sends
``MSG-LEN SP SYSLOG-MSG`` frames over one TLS 1.2+ connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
from pathlib import Path
from typing import Protocol

AUTHPRIV = 10
NOTICE = 5
PRIORITY = AUTHPRIV * 8 + NOTICE
MSGID = "IHE+RFC-3881"
APP_NAME = "ainode"
BOM = "\ufeff"
# RFC 5426: a datagram over IPv4 carries at most 65507 bytes; longer messages go to the file only.
MAX_UDP_BYTES = 65507
CONNECT_TIMEOUT_S = 5.0


def format_message(xml: str, hostname: str | None = None, at: dt.datetime | None = None) -> str:
    """One RFC 5424 message (no trailing newline): ``<85>1 TIMESTAMP HOST ainode PID IHE+RFC-3881 - BOM XML``."""
    stamp = (at or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    return f"<{PRIORITY}>1 {stamp} {host} {APP_NAME} {os.getpid()} {MSGID} - {BOM}{xml}"


def octet_counted(message: str) -> bytes:
    """RFC 5425 section 4.3: the frame is the message's length in octets, a space, the message."""
    data = message.encode("utf-8")
    return str(len(data)).encode("ascii") + b" " + data


class Transport(Protocol):
    def send(self, message: str) -> None: ...  # raises OSError when the collector cannot take it

    def close(self) -> None: ...


class UdpTransport:
    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def send(self, message: str) -> None:
        data = message.encode("utf-8")
        if len(data) > MAX_UDP_BYTES:
            raise OSError(f"message of {len(data)} bytes is too long for one UDP datagram")
        self._sock.sendto(data, self.address)

    def close(self) -> None:
        self._sock.close()


class TlsTransport:
    """One TLS connection, opened on the first send and again after a failure."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca_file: Path | None,
        server_name: str | None,
        cert_file: Path | None,
        key_file: Path | None,
    ) -> None:
        self.host, self.port = host, port
        self.server_name = server_name or host
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
        self._context = context
        self._sock: ssl.SSLSocket | None = None

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        try:
            return self._context.wrap_socket(raw, server_hostname=self.server_name)
        except BaseException:
            raw.close()
            raise

    def send(self, message: str) -> None:
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(octet_counted(message))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            # A TLS close_notify first, so the collector sees a clean end and not a truncation.
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()
            sock.close()
