"""uvicorn in a background thread of the node process, started and stopped by NodeService."""

from __future__ import annotations

import threading
import time

import structlog
import uvicorn
from fastapi import FastAPI

from node.config import HttpConfig
from node.errors import ConfigError

log = structlog.get_logger(__name__)


class HttpServer:
    def __init__(self, app: FastAPI, config: HttpConfig) -> None:
        self.config = config
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
        log.info("http_listening", address=self.config.bind_address, port=self.port)

    @property
    def port(self) -> int:
        for server in getattr(self._server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
