"""The OHIF viewer (npm @ohif/app dist) served by nginx, with /dicom-web/ proxied to a DICOMweb server,
and headless Chromium driven by playwright-core (a node script) to look at it.

Usage::

    with OhifServer(tmp_path / "ohif", dicomweb_upstream=orthanc.dicomweb_url) as ohif:
        ohif.url                         # http://127.0.0.1:PORT
        run_browser_script(script, [ohif.url, study_uid, out_dir], timeout_s=300)

``scripts/install-peers.sh`` puts the dist in ``.peers/ohif/dist`` and playwright-core in
``.peers/node_modules``. The dist itself is never modified: nginx serves our app-config.js in its place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

import httpx

from demo.netutil import stop_process
from tests.peers.net import free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[2]
OHIF_DIST = REPO / ".peers" / "ohif" / "dist"
NODE_MODULES = REPO / ".peers" / "node_modules"
NGINX_BIN = "/usr/sbin/nginx"
CHROMIUM_BIN = "/usr/bin/chromium"
NODE_BIN = "node"

# The recipe's flags (../shared/REAL-PEERS.md): software GL, no network chatter, fresh profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]


def ohif_available() -> bool:
    return (
        (OHIF_DIST / "index.html").exists()
        and (NODE_MODULES / "playwright-core").is_dir()
        and Path(NGINX_BIN).exists()
        and Path(CHROMIUM_BIN).exists()
        and shutil.which(NODE_BIN) is not None
    )


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """window.config for one DICOMweb data source on the same origin (the recipe's app-config.js)."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc via nginx",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


def _nginx_conf(workdir: Path, port: int, upstream: str) -> str:
    user = "user root root;" if os.geteuid() == 0 else ""
    upstream = upstream.rstrip("/")
    return f"""
{user}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    types {{ application/wasm wasm; }}
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp-body;
    proxy_temp_path {workdir}/tmp-proxy;
    fastcgi_temp_path {workdir}/tmp-fastcgi;
    uwsgi_temp_path {workdir}/tmp-uwsgi;
    scgi_temp_path {workdir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {OHIF_DIST};
        location = /app-config.js {{ alias {workdir}/app-config.js; }}
        location /dicom-web/ {{
            proxy_pass {upstream}/;
            # Orthanc builds BulkDataURIs from the Host header: keep the browser's origin in them.
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
        location / {{ try_files $uri $uri/ /index.html; }}
    }}
}}
"""


class OhifServer:
    def __init__(self, workdir: Path, *, dicomweb_upstream: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        (workdir / "app-config.js").write_text(app_config())
        self.conf_path = workdir / "nginx.conf"
        self.conf_path.write_text(_nginx_conf(workdir, self.port, dicomweb_upstream))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> OhifServer:
        log = (self.workdir / "nginx.out").open("ab")
        self.process = subprocess.Popen(
            [NGINX_BIN, "-p", str(self.workdir), "-c", str(self.conf_path)], stdout=log, stderr=log
        )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early: {(self.workdir / 'error.log').read_text()[-2000:]}")
            if not port_open(self.port):
                return False
            try:
                return httpx.get(f"{self.url}/app-config.js", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, "nginx to serve the OHIF app")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout_s=15)
        self.process = None

    def __enter__(self) -> OhifServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_browser_script(script: Path, args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a playwright-core node script; it gets CHROMIUM_BIN and CHROMIUM_ARGS in its environment."""
    env = {
        **os.environ,
        "NODE_PATH": str(NODE_MODULES),
        "CHROMIUM_BIN": CHROMIUM_BIN,
        "CHROMIUM_ARGS": json.dumps(CHROMIUM_ARGS),
    }
    return subprocess.run([NODE_BIN, str(script), *args], capture_output=True, text=True, timeout=timeout_s, env=env)
