"""HTTPS for the API, STOW-RS and the worklist (``http.tls``), against real node processes and a test CA
(tests/tls_certs.py): headless Chromium trusting the CA through an NSS database signs in and sees the
worklist with its viewer link, a browser without the CA refuses the node; HSTS on every response; plain
HTTP on the TLS port gets no answer; client certificates required when ``tls.ca_file`` is set; basic mode
logins checked against argon2id hashes. Screenshot: artifacts/worklist/worklist-https.png (git-ignored)."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from demo.ct_factory import make_ct_series
from demo.node_process import REPO_ROOT, NodeProcess
from tests.api_support import SENDER, VIEWER, password_credentials, stow, token_credentials
from tests.peers.ohif import REPO, run_browser_script
from tests.tls_certs import TlsFiles, make_tls_files

pytestmark = [pytest.mark.peers, pytest.mark.needs("chromium", "certutil")]

SCRIPT = Path(__file__).parent / "browser" / "https_check.js"
VIEWER_TEMPLATE = "http://viewer.example:3000/viewer?StudyInstanceUIDs={study_uid}"
OPERATOR_BASIC = {"name": "oper", "secret": "basic-operator-pw", "role": "operator"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("https-certs"))


def _tls_section(tls: TlsFiles, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key), **extra}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[NodeProcess]:
    http = {
        "tls": _tls_section(tls, hsts_max_age_s=600),
        "auth": {"mode": "token", "credentials": token_credentials([VIEWER, SENDER])},
        "viewer_url_template": VIEWER_TEMPLATE,
        "refresh_interval_s": 2,
    }
    with NodeProcess(tmp_path_factory.mktemp("https-node"), {"workers": {"processes": 0}}, http=http) as n:
        yield n


def _client(node: NodeProcess, tls: TlsFiles, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=node.http_url, verify=ssl.create_default_context(cafile=str(tls.ca_cert)), **kwargs)


def test_https_serves_with_hsts_and_plain_http_gets_no_answer(node: NodeProcess, tls: TlsFiles) -> None:
    assert node.http_url.startswith("https://")
    with _client(node, tls, timeout=30) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.headers["strict-transport-security"] == "max-age=600"
        refused = client.get("/api/studies")  # errors carry it too
        assert refused.status_code == 401 and refused.headers["strict-transport-security"] == "max-age=600"
        assert client.get("/api/studies", headers={"Authorization": f"Bearer {VIEWER['secret']}"}).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=10)
    # A client that does not trust the test CA refuses the node's certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{node.http_url}/healthz", verify=ssl.create_default_context(cafile=str(tls.other_ca_cert)))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_offered(node: NodeProcess, tls: TlsFiles, version: ssl.TLSVersion) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    context.minimum_version = context.maximum_version = version
    with httpx.Client(verify=context, timeout=30) as client:
        assert client.get(f"{node.http_url}/healthz").status_code == 200


def test_tls_1_2_without_forward_secrecy_or_with_cbc_is_refused(node: NodeProcess, tls: TlsFiles) -> None:
    for cipher in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES128-GCM-SHA256"):
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(cipher + ":@SECLEVEL=0")
        with pytest.raises(httpx.ConnectError):  # a handshake failure alert, or the connection closed
            httpx.get(f"{node.http_url}/healthz", verify=context, timeout=10)


def test_worklist_over_https_in_chromium_trusting_the_test_ca(node: NodeProcess, tls: TlsFiles, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "ct", slices=3, rows=32, columns=32)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with _client(node, tls, timeout=60) as client:  # STOW-RS over HTTPS
        stored = stow(client, [f.read_bytes() for f in files], {"Authorization": f"Bearer {SENDER['secret']}"})
        assert stored.status_code == 200, stored.text
    trusting, bare = tmp_path / "home-trusting", tmp_path / "home-bare"
    _nss_database(trusting, tls.ca_cert)
    _nss_database(bare, None)
    out = REPO / "artifacts" / "worklist"
    done = run_browser_script(
        SCRIPT, [node.http_url, VIEWER["secret"], study_uid, str(out), str(trusting), str(bare)], timeout_s=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ERR_CERT_AUTHORITY_INVALID" in seen.get("untrusted_error", ""), seen
    assert seen["login_status"] == 401 and seen["login_form"]
    assert seen["hsts"] == "max-age=600"
    assert seen["security"]["protocol"] in ("TLS 1.3", "TLS 1.2"), seen["security"]
    assert seen["worklist_status"] == 200 and seen["protocol"] == "https:"
    assert seen["viewer_href"] == VIEWER_TEMPLATE.format(study_uid=study_uid)
    assert seen["cookie_secure"] is True and seen["cookie_http_only"] is True
    assert (out / "worklist-https.png").stat().st_size > 10_000


def test_client_certificates_and_argon2_passwords(tmp_path: Path, tls: TlsFiles) -> None:
    """tls.ca_file: a client without a certificate its CA signed is refused in the handshake; then basic
    auth checks the password against its argon2id hash (right: 200, wrong or unknown user: 401)."""
    http = {
        "tls": _tls_section(tls, ca_file=str(tls.ca_cert)),
        "auth": {"mode": "basic", "credentials": password_credentials([OPERATOR_BASIC])},
    }
    with NodeProcess(tmp_path / "node", {"workers": {"processes": 0}}, http=http) as node:
        trusting = ssl.create_default_context(cafile=str(tls.ca_cert))
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{node.http_url}/healthz", verify=trusting, timeout=10)
        with_cert = ssl.create_default_context(cafile=str(tls.ca_cert))
        with_cert.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with httpx.Client(base_url=node.http_url, verify=with_cert, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            right = _basic(OPERATOR_BASIC["name"], OPERATOR_BASIC["secret"])
            assert client.get("/api/me", headers=right).json()["name"] == "oper"
            assert client.get("/api/me", headers=right).status_code == 200  # the verified-credential cache
            assert client.get("/api/me", headers=_basic("oper", "not-the-password")).status_code == 401
            assert client.get("/api/me", headers=_basic("nobody", OPERATOR_BASIC["secret"])).status_code == 401
            login = client.post("/login", data={"user": "oper", "password": OPERATOR_BASIC["secret"]})
            assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower()
        assert OPERATOR_BASIC["secret"] not in node.log_text()


def test_a_certificate_that_does_not_load_stops_start_up_naming_the_field(tmp_path: Path, tls: TlsFiles) -> None:
    # The CA's certificate with the server's key: they do not belong together.
    http = {"tls": {"cert_file": str(tls.ca_cert), "key_file": str(tls.server_key)}}
    node = NodeProcess(tmp_path / "node", {"workers": {"processes": 0}}, http=http)
    done = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(node.config_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "http.tls.cert_file/key_file: cannot load" in done.stderr, done.stderr


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _nss_database(home: Path, ca_cert: Path | None) -> None:
    """$HOME/.pki/nssdb as Chromium reads it, trusting ``ca_cert`` for TLS servers (or nothing)."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    if ca_cert is not None:
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{db}", "-n", "ainode test CA", "-t", "C,,", "-i", str(ca_cert)],
            check=True, capture_output=True,
        )  # fmt: skip
