"""nginx as an HTTPS reverse proxy in front of a loopback HTTP peer (how sites put TLS before Orthanc).

Orthanc 1.10.1's own HTTPS server (SslEnabled) segfaults on the first request on these machines, so
TLS tests of the HTTP destinations go through nginx (Debian package, scripts/install-peers.sh)::

    with TlsProxy(tmp_path, upstream_port=orthanc.http_port, cert=..., key=...) as proxy:
        proxy.url  # https://127.0.0.1:PORT
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

from demo.netutil import stop_process
from tests.peers.net import free_port, port_open, wait_until

NGINX_BIN = "/usr/sbin/nginx"


class TlsProxy:
    def __init__(self, workdir: Path, *, upstream_port: int, cert: Path, key: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        temp = workdir / "temp"
        temp.mkdir(exist_ok=True)
        self.config_path = workdir / "nginx.conf"
        self.config_path.write_text(
            f"""daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
  access_log {workdir / "access.log"};
  client_body_temp_path {temp / "body"};
  proxy_temp_path {temp / "proxy"};
  fastcgi_temp_path {temp / "fastcgi"};
  uwsgi_temp_path {temp / "uwsgi"};
  scgi_temp_path {temp / "scgi"};
  server {{
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_request_buffering off;
    }}
  }}
}}
"""
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15) -> TlsProxy:
        self.process = subprocess.Popen(
            [NGINX_BIN, "-c", str(self.config_path), "-p", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "stderr.log").open("ab"),
        )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early: {(self.workdir / 'stderr.log').read_text()[-2000:]}")
            return port_open(self.port)

        wait_until(ready, timeout_s, "nginx to listen")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)
        self.process = None

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
