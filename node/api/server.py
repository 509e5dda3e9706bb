"""uvicorn in a background thread of the node process, started and stopped by NodeService.

With ``http.tls`` it serves HTTPS only, with an SSLContext built here (not uvicorn's): TLS 1.2 at least; in
TLS 1.2 only ECDHE key exchange (forward secrecy) with AEAD ciphers (AES-GCM, ChaCha20-Poly1305), no CBC;
TLS 1.3's suites as OpenSSL offers them (all AEAD); client certificates required when ``tls.ca_file`` is set.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable

import structlog
import uvicorn
from fastapi import FastAPI

from node.config import HttpConfig, HttpServerTls
from node.errors import ConfigError
from node.tls_server import server_tls_context

log = structlog.get_logger(__name__)


def server_ssl_context(tls: HttpServerTls) -> ssl.SSLContext:
    """The HTTPS context (node/tls_server.py's policy); with ``ca_file`` every client needs a certificate from it."""
    return server_tls_context(
        "http.tls",
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        ca_file=tls.ca_file,
        min_version=tls.min_version,
        client_certificates=ssl.CERT_REQUIRED,
    )


class HttpServer:
    def __init__(self, app: FastAPI, config: HttpConfig) -> None:
        self.config = config
        factory: Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = None
        if config.tls is not None:
            context = server_ssl_context(config.tls)  # built now: a bad file stops start-up, not the thread

            def factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
                return context

        # log_config=None: uvicorn's records go to the node's root handler (structlog JSON);
        # lifespan off: the node, not the app, owns start-up and shutdown.
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.bind_address,
                port=config.port,
                log_config=None,
                lifespan="off",
                access_log=True,
                server_header=False,
                timeout_graceful_shutdown=10,
                ssl_context_factory=factory,
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="http")

    def start(self, timeout_s: float = 15) -> None:
        # Signals stay with the node's main thread: uvicorn installs handlers only in the main thread.
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                # uvicorn logs the bind error itself and exits its loop (e.g. port in use).
                raise ConfigError(f"http: cannot listen on {self.config.bind_address}:{self.config.port}")
            if time.monotonic() > deadline:
                raise ConfigError(f"http: server did not start within {timeout_s:.0f} s")
            time.sleep(0.02)
        log.info(
            "http_listening",
            address=self.config.bind_address,
            port=self.port,
            scheme=self.scheme,
            client_certificates=self.config.tls is not None and self.config.tls.ca_file is not None,
        )

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls is not None else "http"

    @property
    def port(self) -> int:
        for server in getattr(self._server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
